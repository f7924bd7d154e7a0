"""examples/python, run as a user runs them: `strata launch -n 2 -- /usr/bin/python3 ...`."""
import os
import re
import subprocess
import sys

import pytest

from conftest import BUILD, PYTHONPATH

EXAMPLES = BUILD.parents[1] / "examples" / "python"
STRATA = str(BUILD / "bin" / "strata")


def launch(script, *args):
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1")
    r = subprocess.run([STRATA, "launch", "-n", "2", "--", sys.executable, str(EXAMPLES / script), *map(str, args)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


# --meta: FSDP2's way (built on the meta device, fully_shard, to_empty, init_weights).
@pytest.mark.parametrize("how", [[], ["--meta"]])
def test_gpt_fully_shard_learns(how):
    out = launch("gpt_fully_shard.py", "--steps", 30, *how)
    losses = [float(x) for x in re.findall(r"loss ([0-9.]+)", out)]
    assert len(losses) >= 3 and losses[-1] < losses[0] - 1.0, out


def test_resnet18_initialize_keeps_the_optimizer_on_nvme(tmp_path):
    pytest.importorskip("torchvision")
    out = launch("resnet18_initialize.py", "--steps", 6, "--nvme-path", tmp_path)
    nvme = [float(x) for x in re.findall(r"optimizer state on nvme ([0-9.]+) MiB", out)]
    # fp32 master + m + v of 11.7M parameters, this rank's half: about 67 MiB and padding.
    assert nvme and all(60 < v < 100 for v in nvme), out


# --fully-shard: FSDP2's way (meta device, fully_shard, to_empty, init_weights,
# strata.optim.AdamW with a torch scheduler); --bf16-state with it: OffloadPolicy's dtypes.
@pytest.mark.parametrize("how", [[], ["--fully-shard"], ["--fully-shard", "--bf16-state"]])
def test_gpt_larger_than_ram_learns_with_everything_on_nvme(tmp_path, how):
    out = launch("gpt_larger_than_ram.py", "--steps", 20, "--nvme-path", tmp_path, *how)
    assert re.search(r"built [0-9.]+M parameters", out), out
    # fp32 master + m + v and the bf16 parameter and gradient records of this rank's half
    # of 0.8M parameters: about 8 MiB and padding; 12 bytes a parameter, not 18, with bf16
    # state and gradient records.
    nvme = [float(x) for x in re.findall(r"([0-9.]+) MiB of model state on nvme", out)]
    assert nvme and (4 < nvme[0] < 6 if "--bf16-state" in how else 6 < nvme[0] < 40), out
    losses = [float(x) for x in re.findall(r"loss ([0-9.]+)", out)]
    assert len(losses) >= 3 and losses[-1] < losses[0] - 1.0, out
