#!/usr/bin/python3
"""Render a strata train run's report: loss curves and memory per tier over steps.

Usage: plot_report.py RUN/metrics.jsonl RUN/report.png

Uses Debian's python3-matplotlib (installed by scripts/setup), headless.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(metrics_path, out_path):
    rows = [json.loads(line) for line in open(metrics_path) if line.strip()]
    if not rows:
        sys.exit(f"{metrics_path}: no metrics")
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))

    ax_loss.plot(steps, [r["loss"] for r in rows], label="train", linewidth=1)
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
        ax_loss.plot(*zip(*val), "o-", label="validation")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (nats/byte)")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()

    for tier in ("compute", "host", "nvme"):
        ys = [r.get("memory_peak", {}).get(tier, 0) / 2**20 for r in rows]
        if any(ys):
            ax_mem.plot(steps, ys, label=tier)
    ax_mem.set_xlabel("step")
    ax_mem.set_ylabel("MiB (rank 0, peak within the step)")
    ax_mem.set_title("memory per tier")
    ax_mem.grid(alpha=0.3)
    ax_mem.legend()

    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
