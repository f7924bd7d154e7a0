"""The Python API under the launchers users have: torchrun, `strata launch`, and a
torch.distributed process group the caller made. Each run is compared with plain
PyTorch (test_initialize.reference)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import BUILD, HERE, PYTHONPATH, free_port, rank_results, train
from test_initialize import ROWS, STEPS, check_against_reference, config

STRATA = str(BUILD / "bin" / "strata")


def launched(tmp_path, launcher, spec):
    out = tmp_path / "run.json"
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1")
    cmd = [*launcher, sys.executable, str(HERE / "worker.py"), "train", json.dumps(spec), str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return rank_results(out, 2)


def test_under_torchrun(tmp_path):
    spec = {"model": "gpt", "config": config(3, "cpu", tmp_path), "steps": STEPS, "rows": ROWS}
    # --redirects/--tee: torchrun 1.13 on Python 3.11 needs them (README).
    runner = ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), "--redirects", "1", "--tee", "1",
              "--no_python"]
    check_against_reference(launched(tmp_path, runner, spec))


def test_under_strata_launch(tmp_path):
    spec = {"model": "gpt", "config": config(3, "nvme", tmp_path), "steps": STEPS, "rows": ROWS}
    check_against_reference(launched(tmp_path, [STRATA, "launch", "-n", "2", "--"], spec))


@pytest.mark.parametrize("passed", [True, "default"])
def test_on_the_callers_process_group(tmp_path, passed):
    # The caller's torch.distributed group (Gloo), passed as process_group=, or not passed:
    # strata runs on the default group (before, it made a group of its own whose rank 0
    # could not listen on MASTER_PORT, which torch's store held: "Address already in use").
    spec = {"model": "gpt", "config": config(2, "cpu", tmp_path), "steps": STEPS, "rows": ROWS, "torch_group": passed}
    check_against_reference(train(tmp_path, 2, spec))
