r"""Peak memory of training a zoo, phase by phase, against the memory plan (Linux, one CPU device).

    python benchmarks/train_memory.py                          # the benchmark MLP, N = 250 and 1000
    python benchmarks/train_memory.py --ns max     # the largest chunk the plan allows here

For each N a fresh process trains N networks of an MLP for one epoch (`jaxweights.pipelines.train.train_group`,
`--steps` batches of 128 MNIST images, SGD, in the chunks the memory plan chooses) and records
the peak resident memory (`VmHWM`, reset before each phase) of every phase: initialisation, each
checkpoint write, the epoch, the evaluation and the final `params.npz` (the largest over the
chunks). Beside it the memory plan's own count for one chunk (`MemoryPlan.device_bytes`: twice
the state per network plus the temporaries of the networks vmapped at once, plus the data) and
the largest chunk the plan allows on this machine. On a CPU the device memory is the process's memory, so the peak should
stay under the plan's count plus the interpreter and libraries (the `baseline` column: the
resident memory before the zoo exists).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import functools, json, logging, sys
import jax
from jaxweights import config as config_lib, data as data_lib, train
from jaxweights.io import checkpoints, rundir
from jaxweights.pipelines import train as train_pipeline
from jaxweights import data as data_lib

def mem():
    d = dict(l.split(":", 1) for l in open("/proc/self/status"))
    return int(d["VmRSS"].split()[0]) * 1024, int(d["VmHWM"].split()[0]) * 1024

peaks = {}
def wrapped(f, name):
    @functools.wraps(f)
    def g(*a, **k):
        jax.block_until_ready(a)
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
        out = jax.block_until_ready(f(*a, **k))
        key, i = name, 1
        while key in peaks:
            i += 1
            key = f"{name} {i}"
        peaks[key] = mem()[1]
        return out
    return g

checkpoints.Checkpoints.save = wrapped(checkpoints.Checkpoints.save, "checkpoint")
rundir.write_params = wrapped(rundir.write_params, "params.npz")
make = train.make_zoo_fns
train.make_zoo_fns = lambda *a, **k: (lambda z: train.ZooFns(wrapped(z.init, "init"), wrapped(z.train_epoch, "epoch"),
                                                            wrapped(z.evaluate, "evaluate"),
                                                            wrapped(z.reference_weight, "reference")))(make(*a, **k))
n, hidden, steps, data_dir, workdir = json.loads(sys.argv[1])
c = config_lib.default_config()
c.model.hidden, c.num_seeds, c.num_epochs = tuple(hidden), 1, 1
c.max_train, c.max_test, c.keep_checkpoints, c.data_dir = steps * c.batch_size, 1000, 1, data_dir
ds = data_lib.load_dataset(c)
setup = train.make_setup(c, ds)
state_b, step_b = train.network_memory(setup, tuple(ds.x_train.shape[1:]), 1000)
data_b = sum(a.nbytes for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test)) + 1000 * 4
budget = int(0.9 * train.device_memory_bytes())  # what `jaxweights train` plans with
c.memory_limit_mb = budget / 2**20  # the same budget in the run, whatever is free by then
largest = train.plan_memory(10 ** 9, 1, state_b, step_b, data_b, budget, 0, setup.vmap_chunk).chunk_size
n = largest if n == "max" else int(n)
c.num_seeds = n
plan = train.plan_memory(n, 1, state_b, step_b, data_b, budget, 0, setup.vmap_chunk)
baseline = mem()[0]
train_pipeline.train_group(c, workdir, progress=False, dataset=ds)
print("RESULT " + json.dumps({"n": n, "state": state_b, "step": step_b, "planned": plan.device_bytes(),
                              "chunk": plan.chunk_size, "chunks": plan.num_chunks, "largest": largest,
                              "budget": budget, "baseline": baseline, "peaks": peaks}))
"""


def measure(n: int | str, hidden: list[int], steps: int, data_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = json.dumps([n, hidden, steps, data_dir, os.path.join(tmp, "run")])
        out = subprocess.run(
            [sys.executable, "-c", CHILD, args],
            capture_output=True,
            text=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"N={n} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", default="250,1000", help="networks counts; max = the largest chunk the plan allows")
    ap.add_argument("--hidden", default="512,256,128", help="MLP hidden widths")
    ap.add_argument("--steps", type=int, default=10, help="batches of 128 in the epoch")
    ap.add_argument("--data_dir", default=os.environ.get("JAXWEIGHTS_DATA_DIR", ""))
    args = ap.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]
    gb = lambda b: f"{b / 1e9:.2f}"
    rows = [measure(n if n == "max" else int(n), hidden, args.steps, args.data_dir) for n in args.ns.split(",")]
    phases = list(dict.fromkeys(p for r in rows for p in r["peaks"]))
    r0 = rows[0]
    print(
        f"MLP 784-{'-'.join(map(str, hidden))}-10, SGD, batch 128, {args.steps} steps; one network: state "
        f"{r0['state'] / 2**20:.2f} MiB, temporaries {r0['step'] / 2**20:.2f} MiB; plan budget "
        f"{gb(r0['budget'])} GB -> at most {r0['largest']} networks per chunk"
    )
    phases = [p for p in phases if not p[-1].isdigit()]  # later chunks repeat the first one's phases
    head = (
        f"{'N':>6} {'chunks':>9} {'baseline':>9} {'planned':>8} "
        + " ".join(f"{p:>12}" for p in phases)
        + f" {'peak':>7} {'peak-base':>9} {'/planned':>8}"
    )
    print("peak resident memory (GB) by phase")
    print(head)
    print("-" * len(head))
    for r in rows:
        peak = max(r["peaks"].values())
        chunks = f"{r['chunks']}×{r['chunk']}"
        print(
            f"{r['n']:>6} {chunks:>9} {gb(r['baseline']):>9} {gb(r['planned']):>8} "
            + " ".join(f"{gb(max(v for q, v in r['peaks'].items() if q.split(' ')[0] == p)):>12}" for p in phases)
            + f" {gb(peak):>7} {gb(peak - r['baseline']):>9} {(peak - r['baseline']) / r['planned']:>8.2f}"
        )


if __name__ == "__main__":
    main()
