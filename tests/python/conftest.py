"""Shared helpers: where the build is, and running worker.py as real rank processes."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path


BUILD = Path(os.environ.get("STRATA_BUILD_DIR", Path(__file__).resolve().parents[2] / "build" / "release"))
PYTHONPATH = str(BUILD / "python")
HERE = Path(__file__).resolve().parent
# The built package, importable while pytest collects (test modules import worker.py,
# which imports strata), not only once tests run.
if PYTHONPATH not in sys.path:
    sys.path.insert(0, PYTHONPATH)


# As tests/support/multirank.h: rank processes ask glibc's malloc for transparent huge
# pages (speed only; 4 KiB page faults are expensive on CI's VMs). ResNet-18 parity at
# two ranks took 23 s, and 13 s this way.
RANK_MALLOC_TUNABLES = "glibc.malloc.hugetlb=1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world, args, timeout=300, env=None):
    """Starts `world` processes of `/usr/bin/python3 args...` with the variables torchrun
    sets; returns their (returncode, output) after all exit (killed at the timeout)."""
    port = free_port()
    procs = []
    for rank in range(world):
        e = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(port), PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1", **(env or {}))
        e.setdefault("GLIBC_TUNABLES", RANK_MALLOC_TUNABLES)
        procs.append(subprocess.Popen([sys.executable, *map(str, args)], env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    results = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, _ = p.communicate()
            out += f"\n(killed after {timeout} s)"
        results.append((p.returncode, out))
    return results


def train(tmp_path, world, spec, name="run"):
    """worker.py train at `world` ranks; every rank's output, rank 0's first."""
    out = tmp_path / f"{name}.json"
    results = run_ranks(world, [HERE / "worker.py", "train", json.dumps(spec), out])
    for rank, (rc, text) in enumerate(results):
        assert rc == 0, f"rank {rank} exited {rc}:\n{text}"
    return rank_results(out, world)


def rank_results(out, world):
    """What worker.py train wrote for each rank: its JSON, with "params" (the consolidated
    parameters, flattened) and "buffers" (the model's) read from the torch file next to it."""
    import torch

    results = []
    for r in range(world):
        result = json.loads(Path(f"{out}.{r}").read_text())
        result.update(torch.load(f"{out}.{r}.pt"))
        results.append(result)
    return results


