"""strata ckpt export, read back by independent readers written here from
docs/checkpoints.md: a minimal safetensors reader (header length, JSON header, raw
little-endian data) and a reader of strata's own checkpoint format (meta.json and the
rank files), compared value for value."""
import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

BUILD = Path(os.environ.get("STRATA_BUILD_DIR", Path(__file__).resolve().parents[2] / "build" / "release"))
STRATA = str(BUILD / "bin" / "strata")


def run(*args, **kw):
    r = subprocess.run([STRATA, *map(str, args)], capture_output=True, text=True, **kw)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def read_safetensors(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, t in header.items():
        begin, end = t["data_offsets"]
        raw = data[base + begin : base + end]
        if t["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif t["dtype"] == "BF16":  # bf16 is the top half of an fp32
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] == "I64":
            a = np.frombuffer(raw, dtype="<i8").astype(np.int64)
        else:
            raise AssertionError(t["dtype"])
        out[name] = a.reshape(t["shape"])
    return out, meta


def read_strata_checkpoint(step_dir):
    """Every parameter's fp32 values, following docs/checkpoints.md only."""
    step_dir = Path(step_dir)
    meta = json.loads((step_dir / "meta.json").read_text())
    files = {f["shard_rank"]: f for f in meta["files"]}
    blobs = {f["name"]: (step_dir / f["name"]).read_bytes() for f in meta["files"]}

    def record(rank, chunk, tensor, param=-1):
        f = files[rank]
        for r in f["records"]:
            if r["chunk"] == chunk and r["tensor"] == tensor and (chunk >= 0 or r["param"] == param):
                s = r["span"]
                return np.frombuffer(blobs[f["name"]][s["offset"] : s["offset"] + s["bytes"]], dtype="<f4")
        raise AssertionError((rank, chunk, tensor, param))

    out = {}
    for i, p in enumerate(meta["params"]):
        if p["chunk"] < 0:
            out[p["name"]] = record(-1, -1, "values", i).reshape(p["shape"])
            continue
        c = meta["chunks"][p["chunk"]]
        tensor = "master" if c["trains"] else "values"
        pieces, pos, end = [], p["offset"], p["offset"] + p["numel"]
        while pos < end:  # element pos of the chunk: shard rank pos // shard_elems
            rank, within = divmod(pos, c["shard_elems"])
            take = min(end - pos, c["shard_elems"] - within)
            pieces.append(record(rank, p["chunk"], tensor)[within : within + take])
            pos += take
        out[p["name"]] = np.concatenate(pieces).reshape(p["shape"])
    return out, meta


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    run("train", "--out", out, "--steps", "3", "--eval-every", "0", "--eval-batches", "1", "--sample-bytes", "0")
    return out


def test_export_fp32_equals_the_checkpoint_read_independently(run_dir, tmp_path):
    target = tmp_path / "model.safetensors"
    run("ckpt", "export", run_dir / "checkpoints", "--dtype", "fp32", "--names", "saved", "--out", target)
    got, meta = read_safetensors(target)
    want, ckpt_meta = read_strata_checkpoint(run_dir / "checkpoints" / "step-3")
    assert meta["format"] == "pt" and meta["strata_step"] == "3"
    assert set(got) == set(want)
    for name, values in want.items():
        assert got[name].shape == values.shape, name
        np.testing.assert_array_equal(got[name], values, err_msg=name)
    assert np.abs(got["embeddings.wte.weight"]).sum() > 0
    assert ckpt_meta["client"]["next_step"] == 3


def test_export_bf16_with_gpt2_names_is_the_rounded_transposed_masters(run_dir, tmp_path):
    target = tmp_path / "gpt2.safetensors"
    run("ckpt", "export", run_dir / "checkpoints", "--out", target)  # defaults: bf16, gpt2 names
    got, _ = read_safetensors(target)
    want, _ = read_strata_checkpoint(run_dir / "checkpoints" / "step-3")
    rounded = lambda a: torch.from_numpy(a).to(torch.bfloat16).to(torch.float32).numpy()
    assert "wte.weight" in got and "h.0.attn.c_attn.weight" in got and "ln_f.weight" in got
    np.testing.assert_array_equal(got["wte.weight"], rounded(want["embeddings.wte.weight"]))
    np.testing.assert_array_equal(got["h.0.attn.c_attn.weight"], rounded(want["blocks.0.c_attn.weight"]).T)
    np.testing.assert_array_equal(got["h.1.mlp.c_proj.weight"], rounded(want["blocks.1.mlp_proj.weight"]).T)
    np.testing.assert_array_equal(got["h.1.mlp.c_fc.bias"], rounded(want["blocks.1.c_fc.bias"]))
    np.testing.assert_array_equal(got["ln_f.bias"], rounded(want["head.ln_f.bias"]))
    assert len(got) == len(want)


def peak_rss_kib(*args):
    r = subprocess.run(["/usr/bin/time", "-f", "%M", STRATA, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return int(r.stderr.strip().splitlines()[-1])


def test_export_memory_is_bounded_well_under_the_model(tmp_path):
    # The bound: export's 8 MiB of staging buffers, a few 1M-element pieces, the reader's
    # blocks (docs/checkpoints.md), set at 64 MiB; the model (16 layers x 512, about 51M
    # parameters, no tensor over 1M elements) is more than three times that.
    bound = 64 << 20
    out = tmp_path / "big"
    run("train", "-n", "1", "--out", out, "--model", "custom:16x512x8", "--steps", "1", "--seq-len", "16",
        "--micro-batch", "1", "--eval-every", "0", "--eval-batches", "1", "--sample-bytes", "0",
        "--offload-optimizer", "none", "--compute-budget", "none")
    meta = json.loads(next((out / "checkpoints").glob("step-*/meta.json")).read_text())
    model_bytes = 4 * sum(p["numel"] for p in meta["params"])
    assert model_bytes > 3 * bound
    base = peak_rss_kib("ckpt", "inspect", out / "checkpoints")
    peak = peak_rss_kib("ckpt", "export", out / "checkpoints", "--dtype", "fp32", "--out", tmp_path / "m.safetensors")
    above = (peak - base) * 1024
    print(f"export peak RSS {peak / 1024:.0f} MiB, inspect {base / 1024:.0f} MiB: {above / 2**20:.0f} MiB above, "
          f"model {model_bytes / 2**20:.0f} MiB")
    assert above < bound, (peak, base)


# A model with buffers, trained and saved through the Python API: the export holds its
# persistent buffers after the parameters (batch norm's statistics in the export's dtype,
# the integer counters as I64), equal to the live model's; not the non-persistent one.
def test_export_holds_the_models_persistent_buffers(tmp_path):
    import strata
    import models

    model = models.make("normed_mlp")
    cfg = {"train_batch_size": 8, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    engine, *_ = strata.initialize(model=model, config=cfg)
    for step in range(3):
        x, y = models.batch("normed_mlp", step, 8)
        engine.backward(models.loss_fn("normed_mlp", engine(x), y))
        engine.step()
    engine.save_checkpoint(tmp_path / "ckpt")
    params = engine.consolidated_state_dict()
    engine.close()
    target = tmp_path / "m.safetensors"
    run("ckpt", "export", tmp_path / "ckpt", "--dtype", "fp32", "--names", "saved", "--out", target)
    got, _ = read_safetensors(target)
    assert set(got) == set(params) | {"calls", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    for name, b in model.named_buffers():
        if name != "scratch":
            np.testing.assert_array_equal(got[name], b.numpy(), err_msg=name)
    assert got["calls"] == 3 and got["bn.num_batches_tracked"] == 3
    np.testing.assert_array_equal(got["out.weight"], params["out.weight"].numpy())
