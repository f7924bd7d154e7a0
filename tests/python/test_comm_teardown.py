"""Note [communicator teardown] (src/python/comm_binding.cpp): a communicator destroyed
while a Gloo worker still holds the last reference to a tensor that came from Python.
The worker needs the GIL to drop the tensor's Python object while the destroying
thread, holding the GIL, waits for the worker: before the fix this hung. The window is
a few microseconds after each collective, so the loop makes it near certain to be hit:
each iteration broadcasts a temporary tensor (Python drops it first) and destroys the
communicator at once. Without the fix, five runs hung at iterations 30, 65, 84, 158 and
314; with it, 1000 take about 12 s. Run in a child process so a hang is a timeout, not
a stuck suite."""
import subprocess
import sys

from conftest import PYTHONPATH

LOOP = r"""
import sys, torch
from strata import _strata
for i in range(int(sys.argv[1])):
    comm = _strata.Communicator.from_env()
    comm.broadcast(torch.ones(4096))
    del comm
print("done", flush=True)
"""


def test_a_communicator_destroyed_right_after_a_collective_does_not_hang():
    env = {"PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1"}
    try:
        r = subprocess.run([sys.executable, "-c", LOOP, "1000"], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError("destroying a communicator right after a broadcast hung (Note [communicator teardown])")
    assert r.returncode == 0 and "done" in r.stdout, r.stdout + r.stderr
