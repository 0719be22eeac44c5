r"""Bitwise reproducibility of a network across layouts (CPU): devices, chunks, sub-zoos; and the cost of padding.

    python benchmarks/reproducibility.py                       # 26 MLPs on 2,048 MNIST images, 2 epochs
    python benchmarks/reproducibility.py --seeds 65 --lrs 0.05,0.1,0.5 --max_train 0 --epochs 3

The same grid is trained in several layouts, each in a fresh process (the simulated device count,
`XLA_FLAGS=--xla_force_host_platform_device_count`, is fixed when JAX starts): on 1 device (the
reference), on `--devices` devices, on 1 device in memory-plan chunks of `--vmap_chunk`
networks (`config.chunk_size`), and a sub-zoo (the last learning rate's first `--sub_seeds` seeds
trained alone) on 1 and on `--devices` devices. Each network is matched to the reference by its
hyperparameters and counted identical when all its parameters (`params.npz`) and all its metrics
rows (`metrics.csv`) are bitwise equal.

Every layout runs in each `--modes` mode, side by side: **fixed** (the pipeline as it is: each
device's share padded to a multiple of `vmap_chunk`, so every `lax.map` step is one program of
width `vmap_chunk`, and each device runs the single-device program), **before** (the layout before
that: shares padded to the device count only, `lax.map` running its remainder as a second, narrower
program, one SPMD program for all devices; the memory plan is this version's) and, on request, **padded_spmd** (padded as `fixed`, one
SPMD program: the cost of the padding alone). Each mode is compared with its own 1-device run. The
table gives, per layout and mode, the identical networks, the largest |difference| of any
parameter and of test accuracy, the wall time of `train_and_evaluate` (compilation included; the
fastest of `--repeats`), the seconds of one epoch after the first (no compilation) and the compute
spent on padding networks (% of the networks trained).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

CHILD = r"""
import json, logging, re, statistics, sys, time
args = json.loads(sys.argv[1])
import jax
from jaxweights.train import memory, sharding, zoo
if args["mode"] in ("before", "padded_spmd"):  # one SPMD program for all devices (jax.shard_map)
    P = jax.sharding.PartitionSpec
    zoo.per_device = lambda f, mesh, on, donate_argnums=(): jax.jit(jax.shard_map(
        f, mesh=mesh, in_specs=tuple(P(sharding.NETWORKS) if a else P() for a in on),
        out_specs=P(sharding.NETWORKS), check_vma=False), donate_argnums=donate_argnums)
if args["mode"] == "before":  # shares padded to the device count only, lax.map running remainders
    memory.pad_networks = lambda n, d, k=0: sharding.pad_networks(n, d)
    zoo.map_fixed_width = lambda f, xs, k: jax.lax.map(f, xs, batch_size=k)
from jaxweights import config as config_lib
from jaxweights.pipelines import train as train_pipeline

plans, epochs = [], []
class Record(logging.Handler):
    def emit(self, record):
        m = re.search(r"-> (\d+) chunk\(s\) of (\d+) networks", record.getMessage())
        if m:
            plans.append((int(m.group(1)), int(m.group(2))))
        if str(record.msg).startswith("epoch %d/%d"):
            epochs.append(record.args)
log = logging.getLogger("jaxweights")
log.setLevel(logging.INFO)
log.addHandler(Record())
c = config_lib.apply_overrides(config_lib.default_config(), args["config"], where="benchmark")
t = time.perf_counter()
train_pipeline.train_and_evaluate(c, args["workdir"], progress=False, overwrite=True)
later = [a[2] for a in epochs if a[0] > 1]  # epoch 1 of each chunk compiles
print(json.dumps({"wall": time.perf_counter() - t, "devices": jax.device_count(),
                  "trained": sum(k * n for k, n in plans), "epoch": sum(later) / (c.num_epochs - 1) if later else None}))
"""

MODES = {
    "fixed": "each device's share padded to a multiple of vmap_chunk, one single-device program per device",
    "before": "shares padded to the device count, lax.map remainders, one SPMD program (the layout before)",
    "padded_spmd": "padded as `fixed`, but one SPMD program for all devices",
}
METRICS = ["train_loss", "train_acc", "test_loss", "test_acc", "max_abs_weight", "diverged", "exploded"]


def run_layout(config: dict, devices: int, mode: str, workdir: Path) -> dict:
    """Trains `config` in a fresh process on `devices` simulated CPU devices in `mode` (see `MODES`).

    Returns:
      {"wall": seconds, "devices", "trained": networks trained padding included, "epoch": seconds
      of the epochs after the first (summed over chunks), None with one epoch}.
    """
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    arg = json.dumps({"config": config, "workdir": str(workdir), "mode": mode})
    out = subprocess.run(
        [sys.executable, "-c", CHILD, arg], env=env, capture_output=True, text=True, check=False, timeout=3600
    )
    if out.returncode != 0:
        raise SystemExit(f"layout on {devices} device(s) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load(workdir: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(metrics with the hyperparameter columns, params.npz) of a run directory."""
    with np.load(workdir / "params.npz") as z:
        params = {k: z[k] for k in z.files}
    return pd.read_csv(workdir / "metrics.csv"), params


def compare(ref: Path, other: Path) -> tuple[int, int, float, float]:
    """(identical networks, networks, max |Δ parameter|, max |Δ test accuracy|) of `other` against `ref`.

    Networks are matched by their hyperparameters (every grid column but `network`).
    """
    (mr, pr), (mo, po) = load(ref), load(other)
    keys = [c for c in pd.read_csv(ref / "hparams.csv").columns if c != "network"]
    index_ref = {tuple(r): i for i, r in enumerate(pd.read_csv(ref / "hparams.csv")[keys].itertuples(index=False))}
    grid = pd.read_csv(other / "hparams.csv")
    same, dp, dacc = 0, 0.0, 0.0
    for j, row in enumerate(grid[keys].itertuples(index=False)):
        i = index_ref[tuple(row)]
        a = mr[mr.network == i].sort_values("epoch")[METRICS].to_numpy(np.float64)
        b = mo[mo.network == j].sort_values("epoch")[METRICS].to_numpy(np.float64)
        p_equal = all(np.array_equal(pr[k][i], po[k][j]) for k in pr)
        m_equal = a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
        same += p_equal and m_equal
        dp = max(dp, max(float(np.abs(pr[k][i].astype(np.float64) - po[k][j]).max()) for k in pr))
        acc = METRICS.index("test_acc")
        dacc = max(dacc, float(np.abs(a[:, acc] - b[:, acc]).max()))
    return same, len(grid), dp, dacc


def markdown(df: pd.DataFrame) -> str:
    """A pandas table as a Markdown table (floats to 3 significant digits)."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    head = [df.index.name or "", *df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(i), *(fmt(v) for v in row)]) + " |" for i, row in zip(df.index, df.to_numpy())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data_dir", default=os.environ.get("JAXWEIGHTS_DATA_DIR", ""))
    ap.add_argument("--seeds", type=int, default=13)
    ap.add_argument("--lrs", default="0.05,0.5", help="learning rates of the grid")
    ap.add_argument("--hidden", default="32", help="MLP hidden widths, comma-separated")
    ap.add_argument("--max_train", type=int, default=2048, help="0 = all of MNIST")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--vmap_chunk", type=int, default=8)
    ap.add_argument("--sub_seeds", type=int, default=5, help="seeds of the sub-zoo (of the last learning rate)")
    ap.add_argument("--repeats", type=int, default=1, help="wall time: the fastest of this many runs")
    ap.add_argument("--modes", default="fixed,before", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--out", default="", help="also write the table to this CSV")
    args = ap.parse_args()

    lrs = [float(v) for v in args.lrs.split(",")]
    base = {
        "data_dir": args.data_dir,
        "max_train": args.max_train,
        "max_test": 1000,
        "model.hidden": tuple(int(h) for h in args.hidden.split(",")),
        "batch_size": 64,
        "num_epochs": args.epochs,
        "num_seeds": args.seeds,
        "learning_rates": tuple(lrs),
        "vmap_chunk": args.vmap_chunk,
    }
    sub = {**base, "num_seeds": args.sub_seeds, "learning_rates": (lrs[-1],)}
    d = args.devices
    layouts = [
        ("1 device", base, 1),
        (f"{d} devices", base, d),
        (f"1 device, chunks of {args.vmap_chunk}", {**base, "chunk_size": args.vmap_chunk}, 1),
        (f"sub-zoo ({args.sub_seeds} networks), 1 device", sub, 1),
        (f"sub-zoo ({args.sub_seeds} networks), {d} devices", sub, d),
    ]
    modes = args.modes.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            ref = None
            for name, config, devices in layouts:
                workdir = Path(tmp) / mode / name.replace(" ", "_").replace(",", "")
                runs = [run_layout(config, devices, mode, workdir) for _ in range(args.repeats)]
                ref = ref or workdir
                same, n, dp, dacc = compare(ref, workdir)
                trained = runs[0]["trained"]
                epoch = [r["epoch"] for r in runs if r["epoch"] is not None]
                rows.append(
                    {
                        "layout": name,
                        "mode": mode,
                        "identical": f"{same}/{n}",
                        "max |Δparam|": dp,
                        "max |Δtest_acc|": dacc,
                        "wall_s": min(r["wall"] for r in runs),
                        "epoch_s": min(epoch) if epoch else float("nan"),
                        "padding_%": 100 * (1 - n / trained) if trained else float("nan"),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    order = {name: i for i, (name, _, _) in enumerate(layouts)}
    table = table.sort_values(
        ["layout", "mode"],
        key=lambda c: c.map(order) if c.name == "layout" else c.map({m: i for i, m in enumerate(modes)}),
    ).reset_index(drop=True)
    print(
        f"{len(lrs) * args.seeds} networks (MLP {base['model.hidden']}, {args.epochs} epochs, "
        f"max_train {args.max_train or 'all'}), vmap_chunk {args.vmap_chunk}; each mode against its own 1-device run"
    )
    print(markdown(table.set_index("layout")))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
