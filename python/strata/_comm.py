"""Note [one communicator per process]: the group an engine runs its collectives on.

An engine built without a process_group used to make a Gloo group of its own from
RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. A second engine alive in the same process
(a GAN's generator and discriminator) then made a second one, whose rank 0 could not
listen on MASTER_PORT, already taken by the first ("Address already in use"). Now the
group made from the environment is made once per process and shared by every engine
built without a process_group; when the script has initialized torch.distributed
itself, its default group is used, as DeepSpeed's engines share it. Engines on one group
issue their collectives in the order the script runs them, the same on every rank.
"""
from __future__ import annotations

import torch.distributed as dist

from . import _strata

_from_env = None


def communicator(process_group=None, timeout_s=300.0):
    """The communicator for an engine: `process_group`'s, else torch.distributed's
    default group once initialized, else the process's own group from the environment.
    timeout_s (strata.comm_timeout_s): how long its collectives may take from now on."""
    global _from_env
    if process_group is not None:
        comm = _strata.Communicator.from_process_group(process_group, timeout_s)
    elif dist.is_available() and dist.is_initialized():
        comm = _strata.Communicator.from_process_group(dist.group.WORLD, timeout_s)
    else:
        if _from_env is None:
            _from_env = _strata.Communicator.from_env(timeout_s)
        comm = _from_env
    comm.timeout_s = timeout_s  # the shared one keeps the first engine's otherwise
    return comm
