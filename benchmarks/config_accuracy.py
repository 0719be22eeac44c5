r"""Trains shipped configs on their full schedule and prints the best networks' test accuracy.

    python benchmarks/config_accuracy.py configs/mnist_mlp.py configs/mnist_cnn.py \
        --workdir runs/accuracy --data_dir DATA [--set num_seeds=1] [--budget_s 3600]

One row per config: networks, epochs, best / median test accuracy of the non-diverged networks
at the last epoch, the hyperparameters of the best network, how many diverged, and wall time.
`--set key=value` overrides config fields (Python literals) for every config, e.g. fewer seeds
on a small machine; the table says which overrides were used.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import logging
import time
from pathlib import Path

from jaxweights.config import apply_overrides
from jaxweights.io import rundir
from jaxweights.pipelines import train as train_pipeline


def load_config(path: str):
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location(Path(file).stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--workdir", default="runs/accuracy")
    ap.add_argument("--data_dir", default="")
    ap.add_argument("--set", action="append", default=[], help="key=value override (Python literal)")
    ap.add_argument("--budget_s", type=float, default=float("inf"), help="skip configs once this much time is spent")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import jax

    print(f"device: {jax.devices()[0].device_kind}; overrides: {args.set or 'none'}")
    print(f"{'config':<22} {'nets':>5} {'epochs':>6} {'best':>7} {'median':>7} {'div':>4} {'time_s':>7}  best network")
    t_start = time.perf_counter()
    for path in args.configs:
        if time.perf_counter() - t_start > args.budget_s:
            print(f"{Path(path).stem:<22} skipped: time budget spent")
            continue
        c = load_config(path)
        sets = dict(kv.split("=", 1) for kv in args.set)
        overrides = {"data_dir": args.data_dir} if args.data_dir else {}
        overrides |= {key: ast.literal_eval(value) for key, value in sets.items()}
        c = apply_overrides(c, overrides, where="--set", keep_groups=True)
        t = time.perf_counter()
        df = train_pipeline.train_and_evaluate(c, Path(args.workdir) / Path(path).stem, overwrite=True, progress=False)
        dt = time.perf_counter() - t
        last = rundir.last_epoch(df)
        ok = last[~last.diverged.astype(bool)]
        best = ok.loc[ok.test_acc.idxmax()]
        desc = f"lr={best.learning_rate:g} init_scale={best.init_scale:g} seed={int(best.seed)}"
        print(
            f"{Path(path).stem:<22} {len(last):>5} {int(df.epoch.max()):>6} {ok.test_acc.max():>7.4f} "
            f"{ok.test_acc.median():>7.4f} {int(last.diverged.sum()):>4} {dt:>7.0f}  {desc}",
            flush=True,
        )


if __name__ == "__main__":
    main()
