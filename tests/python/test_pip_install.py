"""`pip install --no-build-isolation .` with no index (no network): the installed package
imports from elsewhere and trains a step."""
import os
import subprocess
import sys

from conftest import BUILD

ROOT = BUILD.parents[1]


def test_pip_install_without_network(tmp_path):
    target = tmp_path / "site"
    env = dict(os.environ, STRATA_BUILD_DIR=str(BUILD))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                        "--target", str(target), str(ROOT)], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    code = ("import strata, torch; m = torch.nn.Linear(4, 2); "
            "e, *_ = strata.initialize(model=m, config={'train_batch_size': 2, 'zero_optimization': {'stage': 3}, "
            "'optimizer': {'type': 'AdamW', 'params': {'lr': 1e-3}}}); "
            "e.backward(e(torch.ones(2, 4)).sum()); e.step(); print(strata.__file__, e.global_steps)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    path, steps = r.stdout.split()
    assert path.startswith(str(target)) and steps == "1", r.stdout
