r"""Training throughput of a zoo: jaxweights (vmapped + scanned) vs PyTorch, side by side.

    python benchmarks/train_throughput.py                      # MLP, CNN, ViT at the default N
    python benchmarks/train_throughput.py --models mlp --ns 1,8,64 --steps 50
    python benchmarks/train_throughput.py --dtype bfloat16     # bf16 compute (GPU)
    python benchmarks/train_throughput.py --sharded --ns 8,64,max  # networks axis over all devices;
                                                               # max = the most the memory plan allows
    python benchmarks/train_throughput.py --compare-conv --ns 8,64  # CNN: grouped conv vs lax.map vs im2col
    python benchmarks/train_throughput.py --models mlp --ns 2048 --vmap-chunk 0,16,128  # sweep lax.map chunks
    python benchmarks/train_throughput.py --models mlp --batch 1024   # arithmetic intensity grows with the batch

For each model and N it prints networks·steps/s and achieved FLOP/s of one jitted epoch (a
`lax.scan` over `--steps` SGD steps of N vmapped networks, batch 128, MNIST- or CIFAR-shaped
random data), the fraction of the machine's matmul ceiling (a large `jnp.dot` timed in the same
run), and the same training done by a plain PyTorch loop over networks (one model and optimizer
per seed, as users write it) and by a `torch.func` vmapped ensemble (`stack_module_state` +
`vmap(grad(...))`). FLOPs per step come from XLA's cost analysis of one network's
forward+backward; all three columns train the same architecture. Ratios are measured in one
run on the same machine; absolute numbers mean little on a shared CPU.

The roofline columns say which ceiling binds. `MB/step` is the memory traffic of one network's
training step as XLA's cost analysis of the compiled zoo program counts it (`train.step_cost`:
bytes read and written by every fused kernel, parameters and optimizer state included, no cache
reuse across kernels), `flop/B` the arithmetic intensity, and `roof` = min(matmul ceiling,
memory bandwidth × intensity), with the bandwidth of a large elementwise pass timed in the same
run. It assumes every byte comes from device memory: that holds for a large zoo on a GPU, whose
networks' state is far larger than the cache; above 100% means caches served part of the
traffic (a CPU, or a `--vmap-chunk` chunk small enough to stay in cache over all the steps of
the epoch). `% roof` near 100 means the step is as fast as the memory traffic the compiler
produced allows: a faster zoo then needs fewer bytes per step (a larger batch, or parameters
kept on chip across steps), not faster matmuls.

`--compare-conv` times the CNN zoo four ways in one run: im2col convolutions (batched matmuls)
or XLA convolutions (`lax.conv`, which vmapped over networks becomes one grouped convolution),
each with all N networks vmapped or `lax.map` over chunks (`config.vmap_chunk`, `--chunks`).
"""

from __future__ import annotations

import argparse
import os
import time

# PyTorch shares the GPU with JAX here: stop JAX from taking 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np

from jaxweights import config as config_lib
from jaxweights import models, train

SHAPES = {"mlp": (28, 28, 1), "cnn": (28, 28, 1), "vit": (32, 32, 3)}
KWARGS = {
    "mlp": dict(hidden=(512, 256, 128)),
    "cnn": dict(channels=(32, 64), dense=(128,)),
    "vit": dict(patch_size=4, width=128, depth=4, num_heads=4, mlp_ratio=2.0, pooling="mean"),
}


def _seconds_per_call(f, a, reps: int) -> float:
    """Wall seconds of one call of the jitted `f(a)`, after a warm-up call that compiles it."""
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return (time.perf_counter() - t) / reps


def matmul_ceiling(dtype, n: int = 4096, reps: int = 5) -> float:
    """FLOP/s of a large square `jnp.dot` (the machine's practical matmul ceiling)."""
    return 2 * n**3 / _seconds_per_call(jax.jit(lambda a: a @ a), jnp.ones((n, n), dtype), reps)


def memory_bandwidth(n_bytes: int = 2**28, reps: int = 5) -> float:
    """Bytes/s (read + written) of a large elementwise pass (the machine's practical memory ceiling)."""
    return (
        2 * n_bytes / _seconds_per_call(jax.jit(lambda a: a * 1.5 + 1.0), jnp.ones((n_bytes // 4,), jnp.float32), reps)
    )


def _setup(name: str, batch: int, dtype, conv_impl: str = "im2col", vmap_chunk: int = 0) -> train.Setup:
    shape = SHAPES[name]
    kw = dict(KWARGS[name], conv_impl=conv_impl) if name == "cnn" else KWARGS[name]
    model = models.make_model(name, num_classes=10, image_shape=shape, dtype=dtype, **kw)
    return train.Setup(
        model=model,
        batch_size=batch,
        mean=(127.0,) * shape[-1],
        std=(64.0,) * shape[-1],
        compute_dtype=dtype or jnp.float32,
        vmap_chunk=vmap_chunk,
    )


def max_networks(name: str, steps: int, batch: int, dtype, mesh, conv_impl: str = "im2col") -> int:
    """The largest N the memory plan puts in one chunk on `mesh` (or one device)."""
    setup = _setup(name, batch, dtype, conv_impl)
    state_b, step_b = train.network_memory(setup, SHAPES[name], 500)
    data_b = steps * batch * (int(np.prod(SHAPES[name])) + 4)
    plan = train.plan_memory(
        10**9, mesh.size if mesh is not None else 1, state_b, step_b, data_b, int(0.9 * train.device_memory_bytes())
    )
    return plan.chunk_size


def bench_jax(
    name: str,
    n_nets: int,
    steps: int,
    batch: int,
    dtype,
    reps: int,
    conv_impl: str = "im2col",
    mesh=None,
    vmap_chunk: int = 0,
) -> tuple[float, float]:
    """(networks·steps/s, FLOP/s) of one jitted epoch of `n_nets` vmapped networks.

    With `mesh` (`train.networks_mesh()`) the networks axis is sharded over its devices
    (`n_nets` must be a multiple of the mesh size) and the data replicated on each.
    """
    shape = SHAPES[name]
    setup = _setup(name, batch, dtype, conv_impl, vmap_chunk)
    c = config_lib.default_config()
    c.num_seeds, c.learning_rates = n_nets, [0.01]
    hp = train.hyper_from_grid(config_lib.hyperparameter_grid(c))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (steps * batch, *shape), dtype=np.uint8)
    y = rng.integers(0, 10, steps * batch, dtype=np.int32)
    if mesh is None:
        x, y = jnp.asarray(x), jnp.asarray(y)
    else:
        hp = train.shard(train.Hyper(*(np.asarray(f) for f in hp)), mesh)
        x, y = train.shard((x, y), mesh, networks_axis=False)
    fns = train.make_zoo_fns(setup, shape, 500, mesh)
    state = fns.init(hp)
    flops = train.step_flops(setup, jax.tree.map(lambda a: a[0], state.params), shape)
    state, m = fns.train_epoch(state, hp, jnp.int32(0), x, y)  # compile
    jax.block_until_ready(m)
    t = time.perf_counter()
    for e in range(reps):
        state, m = fns.train_epoch(state, hp, jnp.int32(e + 1), x, y)
    jax.block_until_ready((state, m))
    dt = (time.perf_counter() - t) / reps
    return n_nets * steps / dt, flops * n_nets * steps / dt


# ------------------------------ PyTorch baselines ------------------------------


def torch_model(name: str):
    import torch.nn as tnn

    if name == "mlp":
        return tnn.Sequential(
            tnn.Flatten(),
            tnn.Linear(784, 512),
            tnn.ReLU(),
            tnn.Linear(512, 256),
            tnn.ReLU(),
            tnn.Linear(256, 128),
            tnn.ReLU(),
            tnn.Linear(128, 10),
        )
    if name == "cnn":
        return tnn.Sequential(
            tnn.Conv2d(1, 32, 3, padding=1),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Conv2d(32, 64, 3, padding=1),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Flatten(),
            tnn.Linear(64 * 7 * 7, 128),
            tnn.ReLU(),
            tnn.Linear(128, 10),
        )
    if name == "vit":
        return _torch_vit_class()()
    raise ValueError(name)


_VIT = None


def _torch_vit_class():
    """The PyTorch ViT baseline, defined once (torch.func needs one class for all members)."""
    global _VIT
    if _VIT is None:
        import torch
        import torch.nn as tnn

        class ViT(tnn.Module):
            def __init__(self, p=4, d=128, depth=4, heads=4):
                super().__init__()
                self.p = p
                self.embed = tnn.Linear(p * p * 3, d)
                self.pos = tnn.Parameter(torch.zeros(1, (32 // p) ** 2, d))
                layer = tnn.TransformerEncoderLayer(
                    d, heads, 2 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
                )
                self.enc = tnn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
                self.norm, self.head = tnn.LayerNorm(d), tnn.Linear(d, 10)

            def forward(self, x):  # x: (B, 3, 32, 32)
                b, p = x.shape[0], self.p
                x = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * p * p)
                x = self.enc(self.embed(x) + self.pos)
                return self.head(self.norm(x).mean(1))

        _VIT = ViT
    return _VIT


def _torch_device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _torch_zoo(name: str, n_nets: int, steps: int, batch: int):
    """Random NCHW batches for `steps` steps and `n_nets` freshly initialised models."""
    import torch

    shape, dev = SHAPES[name], _torch_device()
    x = torch.randn(steps, batch, shape[2], shape[0], shape[1], device=dev)
    y = torch.randint(0, 10, (steps, batch), device=dev)
    return x, y, [torch_model(name).to(dev) for _ in range(n_nets)]


def _timed(run, steps: int, n_nets: int) -> float:
    run(min(2, steps))  # warm-up
    _sync()
    t = time.perf_counter()
    run(steps)
    _sync()
    return n_nets * steps / (time.perf_counter() - t)


def bench_torch_loop(name: str, n_nets: int, steps: int, batch: int) -> float:
    """networks·steps/s of a Python loop over networks, each with its own model and SGD."""
    import torch

    x, y, nets = _torch_zoo(name, n_nets, steps, batch)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in nets]
    loss_fn = torch.nn.CrossEntropyLoss()

    def run(k):
        for net, opt in zip(nets, opts):
            for s in range(k):
                opt.zero_grad(set_to_none=True)
                loss_fn(net(x[s]), y[s]).backward()
                opt.step()

    return _timed(run, steps, n_nets)


def bench_torch_func(name: str, n_nets: int, steps: int, batch: int) -> float:
    """networks·steps/s of a `torch.func` ensemble: stacked parameters, vmap(grad), manual SGD."""
    import torch
    from torch.func import functional_call, grad, stack_module_state, vmap

    x, y, nets = _torch_zoo(name, n_nets, steps, batch)
    params, buffers = stack_module_state(nets)
    base = torch_model(name).to("meta")

    def loss(p, b, xb, yb):
        return torch.nn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    g = vmap(grad(loss), in_dims=(0, 0, None, None))

    def run(k):
        for s in range(k):
            grads = g(params, buffers, x[s], y[s])
            with torch.no_grad():
                for key in params:
                    params[key].sub_(0.01 * grads[key])

    return _timed(run, steps, n_nets)


def _in_fresh_process(fn, *args):
    """Runs a PyTorch measurement in its own process.

    PyTorch's OpenMP threads keep spinning after a run and XLA's thread pool does the same, so
    in one process each steals the CPU from the other and both columns come out wrong.
    """
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mlp,cnn,vit")
    ap.add_argument("--ns", default="", help="networks counts, e.g. 1,8,64 (default: per model)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--conv-impl", default="im2col", choices=["im2col", "xla"], help="CNN convolution")
    ap.add_argument("--torch-steps", type=int, default=10)
    ap.add_argument("--torch-max-n", type=int, default=64, help="skip the PyTorch columns above this N")
    ap.add_argument(
        "--sharded",
        action="store_true",
        help="shard the networks axis over all devices (N rounded up to a multiple of them)",
    )
    ap.add_argument(
        "--vmap-chunk",
        default="-1",
        help="networks vmapped at once (lax.map over chunks); -1 = the library default "
        "(8 on CPU, all on accelerators), 0 = all; a list (0,16,128) times each",
    )
    ap.add_argument(
        "--compare-conv",
        action="store_true",
        help="CNN only: im2col vs XLA (grouped) convolutions, all vmapped vs lax.map chunks",
    )
    ap.add_argument("--chunks", default="1,8", help="lax.map chunk sizes for --compare-conv")
    ap.add_argument("--impls", default="im2col,xla", help="convolution forms for --compare-conv")
    args = ap.parse_args()
    if args.compare_conv:
        return compare_conv(args)
    mesh = train.networks_mesh() if args.sharded else None
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
    chunks = [train.default_vmap_chunk() if int(c) < 0 else int(c) for c in args.vmap_chunk.split(",")]
    defaults = {"mlp": "1,8,64", "cnn": "1,8", "vit": "1,8"}
    import importlib.util

    have_torch = importlib.util.find_spec("torch") is not None and not args.no_torch
    dev = jax.devices()[0]
    # Sharded: one device's ceilings times the devices (right for real accelerators; simulated CPU
    # devices share the same cores and memory).
    n_dev = mesh.size if mesh else 1
    ceiling = matmul_ceiling(dtype or jnp.float32) * n_dev
    bandwidth = memory_bandwidth() * n_dev
    print(
        f"device: {dev.platform} ({dev.device_kind}), jax {jax.__version__}, compute {args.dtype}, "
        f"batch {args.batch}, {args.steps} steps/epoch, conv {args.conv_impl}, "
        f"{f'sharded over {mesh.size} devices' if mesh else 'one device'}"
    )
    print(
        f"matmul ceiling (4096² jnp.dot): {ceiling / 1e12:.3f} TFLOP/s; memory bandwidth (256 MiB "
        f"elementwise pass, read + write): {bandwidth / 1e9:,.1f} GB/s"
    )
    head = (
        f"{'model':<5} {'N':>5} {'chunk':>5} {'jax nets·steps/s':>17} {'TFLOP/s':>8} {'% ceil':>7} "
        f"{'MB/step':>8} {'flop/B':>7} {'roof':>7} {'% roof':>7} "
        f"{'torch loop':>11} {'torch.func':>11} {'×loop':>7} {'×func':>7}"
    )
    print(head)
    print("-" * len(head))
    for name in args.models.split(","):
        for v in (args.ns or defaults[name]).split(","):
            n = (
                max_networks(name, args.steps, args.batch, dtype, mesh, args.conv_impl)
                if v == "max"
                else train.pad_networks(int(v), n_dev)
            )
            tl = tf = float("nan")
            if have_torch and n <= args.torch_max_n:
                tl = _in_fresh_process(bench_torch_loop, name, n, args.torch_steps, args.batch)
                tf = _in_fresh_process(bench_torch_func, name, n, args.torch_steps, args.batch)
            per_dev = n // n_dev
            # a chunk of at least the networks per device is the same program as vmapping all of them
            for k in dict.fromkeys(k if 0 < k < per_dev else 0 for k in chunks):
                nsps, fl = bench_jax(name, n, args.steps, args.batch, dtype, args.reps, args.conv_impl, mesh, k)
                step_flops, step_bytes = train.step_cost(
                    _setup(name, args.batch, dtype, args.conv_impl), SHAPES[name], k or per_dev
                )
                intensity = step_flops / step_bytes if step_bytes else float("nan")
                roof = min(ceiling, bandwidth * intensity)
                print(
                    f"{name:<5} {n:>5} {k or 'all':>5} {nsps:>17,.1f} {fl / 1e12:>8.3f} "
                    f"{100 * fl / ceiling:>6.1f}% {step_bytes / 1e6:>8.2f} {intensity:>7.1f} {roof / 1e12:>7.3f} "
                    f"{100 * fl / roof:>6.1f}% {tl:>11,.1f} {tf:>11,.1f} {nsps / tl:>7.2f} {nsps / tf:>7.2f}",
                    flush=True,
                )


def compare_conv(args) -> None:
    """The CNN zoo with each convolution form and networks mapping, side by side."""
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
    dev = jax.devices()[0]
    print(
        f"device: {dev.platform} ({dev.device_kind}), jax {jax.__version__}, compute {args.dtype}, "
        f"batch {args.batch}, {args.steps} steps/epoch; CNN {KWARGS['cnn']}"
    )
    head = f"{'N':>5} {'conv':>7} {'networks':>14} {'nets·steps/s':>13} {'× best':>7}"
    print(head)
    print("-" * len(head))
    for v in (args.ns or "8,64").split(","):
        n = int(v)
        rows = []
        for impl in args.impls.split(","):
            for k in (0, *(int(c) for c in args.chunks.split(",") if 0 < int(c) < n)):
                nsps, _ = bench_jax("cnn", n, args.steps, args.batch, dtype, args.reps, impl, None, k)
                rows.append((impl, "vmap all" if k == 0 else f"lax.map k={k}", nsps))
        best = max(r[2] for r in rows)
        for impl, how, nsps in rows:
            print(f"{n:>5} {impl:>7} {how:>14} {nsps:>13,.1f} {nsps / best:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
