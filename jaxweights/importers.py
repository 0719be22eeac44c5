"""Reading networks trained elsewhere: orbax, Flax msgpack, `.npz` and `.safetensors` files.

`load(paths)` reads one or more parameter files and returns the stacked parameters the rest of
the library takes: a nested dict in Flax naming and layout, every leaf with the networks axis
first. Several files become one population when their structures match.

Formats (chosen by the path, or `fmt=`):

    orbax        a checkpoint directory: `DIR/checkpoints/<epoch>` of a `jaxweights train` run
                 (or its `default/` item), any `StandardCheckpointer` directory, a `checkpoints/`
                 folder (its latest step) or a run directory (its latest checkpoint)
    msgpack      `flax.serialization.to_bytes` output (`.msgpack`, `.flax`)
    npz          `numpy.savez` archives, e.g. a run's `params.npz` (keys "Dense_0/kernel")
    safetensors  PyTorch / Hugging Face state dicts, read with `safetensors.numpy` (no torch)

When a file holds a whole training state, its `params` subtree is used (a Flax `variables` dict,
a `jaxweights` TrainState, ...). Integer leaves and PyTorch's BatchNorm buffers (`running_mean`,
`running_var`, `num_batches_tracked`) are dropped: they are not learnable weights. float16 and
bfloat16 weights are widened to float32.

Layouts (`layout=`, default "auto"):

    flax    leaves named `kernel`: Dense (in, out), Conv (kh, kw, in, out), any depth of
            '/'-joined module names ("Dense_0/kernel", "encoder_0/mlp_in/bias")
    torch   leaves named `weight`: Linear (out, in), Conv (out, in, kh, kw) (generally
            (out, in, *spatial)); dotted module names ("features.0.weight", "fc1.bias")

"auto" reads `torch` when the leaf names end in `weight` and `flax` otherwise; a file mixing
both is refused (set the layout). Reading `torch` maps `a.b.weight` -> `a/b/kernel` transposed
to `(*spatial, in, out)` (1-D weights, i.e. norm scales, become `a/b/scale`), `a.b.bias` ->
`a/b/bias`, so statistics, node strength and distances see Flax conventions. PyTorch flattens
conv feature maps channel-first (C, H, W) and Flax channel-last (H, W, C); a Linear layer that
follows a conv layer (in the chain order node strength uses: the file's stored order, or `layers=`)
has its input rows permuted from the first to the second, which changes no statistic but puts
node strength's "channel c feeds rows r % C == c" rule right. `layout="flax"` on files whose
leaves are named `weight` renames them to `kernel` without transposing.

Stacking (`stacked=`, default auto): a file holds one network, or a population with the networks
axis first (a run's `params.npz`, a `jaxweights train` checkpoint). Auto: a checkpoint with the
`diverged` flags of a `jaxweights` train state, or biases with two dimensions (kernels with 3 or
5 in Flax layout when there are no biases), read as a population; otherwise one network.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxweights.io import atomic, checkpoints, rundir

log = logging.getLogger("jaxweights")

FORMATS = ("orbax", "msgpack", "npz", "safetensors")
LAYOUTS = ("auto", "torch", "flax")
TORCH_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class ParamsError(ValueError):
    """A parameter file that cannot be read as asked; the message names the file and leaf."""


# ============================== formats ==============================


def detect_format(path: str | os.PathLike) -> str:
    """The format of a parameter file from its name (a directory is an orbax checkpoint).

    Args:
      path: a file or directory.

    Returns:
      One of `FORMATS`.

    Raises:
      ParamsError: the path does not exist or its suffix is not a known format.
    """
    p = Path(path)
    if not p.exists():
        raise ParamsError(f"{p}: no such file or directory")
    if p.is_dir():
        return "orbax"
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".msgpack", ".flax", ".msgpk"):
        return "msgpack"
    raise ParamsError(
        f"{p}: unknown format {suffix or '(no suffix)'!r}; expected an orbax checkpoint directory, "
        ".msgpack/.flax, .npz or .safetensors"
    )


def _read_orbax(p: Path) -> Any:
    """The parameters of an orbax checkpoint (its latest epoch), read by `checkpoints.restore_params`."""
    try:
        return checkpoints.restore_params(p)
    except checkpoints.CheckpointError as e:
        raise ParamsError(str(e)) from None


def _read_raw(p: Path, fmt: str) -> Any:
    """The tree a file holds (nested mappings or a flat dict), before any renaming."""
    try:
        if fmt == "npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if fmt == "safetensors":
            from safetensors.numpy import load_file

            return load_file(str(p))
        if fmt == "msgpack":
            from flax import serialization

            return serialization.msgpack_restore(p.read_bytes())
    except ParamsError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupted or truncated files raise many types
        raise ParamsError(f"{p}: cannot read as {fmt} ({type(e).__name__}: {str(e).strip()[:200]})") from None
    if fmt == "orbax":
        return _read_orbax(p)
    raise ParamsError(f"{p}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if hasattr(tree, "unfreeze"):
        tree = tree.unfreeze()
    if hasattr(tree, "_asdict"):
        tree = tree._asdict()
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}/{i}" if prefix else str(i)))
        return out
    return {prefix: tree} if tree is not None else {}


def _params_subtree(tree: Any) -> tuple[Any, bool]:
    """(the `params` part of a saved state, whether it carried a jaxweights `diverged` flag)."""
    if hasattr(tree, "_asdict"):
        tree = tree._asdict()
    zoo = False
    while isinstance(tree, Mapping) and isinstance(tree.get("params"), Mapping):
        zoo = zoo or ("diverged" in tree and np.ndim(tree["diverged"]) == 1)
        tree = tree["params"]
    return tree, zoo


def _leaf_name(key: str) -> str:
    return re.split(r"[/.]", key)[-1]


# ============================== layouts ==============================


def detect_layout(keys: Sequence[str]) -> str:
    """ "torch" when parameter names end in `weight`, "flax" otherwise.

    Args:
      keys: parameter names ("fc1.weight", "Dense_0/kernel", ...).

    Returns:
      "torch" or "flax".

    Raises:
      ParamsError: names end in both `weight` and `kernel` (set the layout explicitly).
    """
    names = {_leaf_name(k) for k in keys}
    if "weight" in names and "kernel" in names:
        raise ParamsError("parameter names end in both 'weight' and 'kernel'; set the layout (--layout torch|flax)")
    return "torch" if "weight" in names else "flax"


def torch_to_flax_kernel(w: np.ndarray, networks_axis: bool = False) -> np.ndarray:
    """A PyTorch weight `(out, in, *spatial)` in Flax layout `(*spatial, in, out)`.

    Args:
      w: the weight of one network, or of N networks when `networks_axis`.
      networks_axis: whether `w` has a leading networks axis (kept first).

    Returns:
      Linear `(out, in)` -> `(in, out)`; Conv2d `(out, in, kh, kw)` -> `(kh, kw, in, out)`.
    """
    o = 1 if networks_axis else 0
    nd = w.ndim - o
    perm = tuple(range(o)) + tuple(o + i for i in range(2, nd)) + (o + 1, o)
    return np.transpose(w, perm)


def _rename_torch(flat: dict[str, np.ndarray], transpose: bool, stacked: bool) -> dict[str, np.ndarray]:
    out = {}
    for k, v in flat.items():
        parts = [q for q in re.split(r"[/.]", k) if q]
        head, leaf = parts[:-1], parts[-1]
        per_net = v.ndim - (1 if stacked else 0)
        if leaf in ("weight", "kernel") and per_net >= 2:
            leaf, v = "kernel", (torch_to_flax_kernel(v, stacked) if transpose else v)
        elif leaf == "weight" and per_net == 1:
            leaf = "scale"
        name = "/".join(head + [leaf])
        if name in out:
            raise ParamsError(f"parameter {k!r} maps to {name!r}, which another parameter already took")
        out[name] = v
    return out


def _torch_flatten_order(flat: dict[str, np.ndarray], stacked: bool, layers: Sequence[str] | None):
    """Permutes the rows of a dense kernel that follows a conv from (C, H, W) to (H, W, C) order."""
    o = 1 if stacked else 0
    kernels = {k.rsplit("/", 1)[0]: k for k, v in flat.items() if k.endswith("kernel") and v.ndim - o >= 2}
    order = list(layers) if layers is not None else list(kernels)  # the file's stored order
    order = [name for name in order if name in kernels]
    for prev, name in zip(order, order[1:]):
        a, b = flat[kernels[prev]], flat[kernels[name]]
        if a.ndim - o == 4 and b.ndim - o == 2:
            c, din = a.shape[-1], b.shape[o]
            if din != c and din % c == 0:
                hw = din // c
                idx = np.arange(din).reshape(c, hw).T.reshape(-1)  # new row (p, c) <- old row c*hw + p
                flat[kernels[name]] = np.take(b, idx, axis=o)
    return flat


# ============================== reading ==============================


def read(
    path: str | os.PathLike,
    *,
    layout: str = "auto",
    stacked: bool | None = None,
    fmt: str | None = None,
    layers: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Reads one parameter file as a population, in Flax naming and layout.

    Args:
      path: an orbax checkpoint directory, a `.msgpack`/`.flax`, `.npz` or `.safetensors` file.
      layout: "auto", "torch" or "flax" (see the module docstring).
      stacked: whether the file holds N networks with the networks axis first (None: detect).
      fmt: one of `FORMATS` (None: from the path).
      layers: chain order of the kernel layers (module paths after renaming, "fc1", "features/0");
        used only to find the Linear layers that follow a conv in PyTorch files.

    Returns:
      A flat dict `{"Dense_0/kernel": array}` whose leaves have the networks axis first (of
      size 1 for a file holding one network), float32 (float64 stays float64).

    Raises:
      ParamsError: unreadable file, unknown format or layout, no floating-point parameters.
    """
    p = Path(path)
    if layout not in LAYOUTS:
        raise ParamsError(f"--layout: unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise ParamsError(f"{p}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    tree, zoo = _params_subtree(_read_raw(p, fmt))
    flat, dropped = {}, []
    for k, v in _flatten(tree).items():
        v = np.asarray(v)
        if _leaf_name(k) in TORCH_BUFFERS or "float" not in v.dtype.name:  # bfloat16 is not np.floating
            dropped.append(k)
            continue
        flat[k] = v if v.dtype == np.float64 else v.astype(np.float32)
    if dropped:
        log.info(
            "%s: skipped %d non-weight entries (%s%s)",
            p,
            len(dropped),
            ", ".join(dropped[:3]),
            ", ..." if len(dropped) > 3 else "",
        )
    if not flat:
        raise ParamsError(f"{p}: holds no floating-point parameters")
    resolved = detect_layout(list(flat)) if layout == "auto" else layout
    if stacked is None:
        stacked = zoo or _looks_stacked(flat, resolved)
    if not stacked:
        flat = {k: v[None] for k, v in flat.items()}
    if resolved == "torch" or any(_leaf_name(k) == "weight" for k in flat):
        flat = _rename_torch(flat, transpose=resolved == "torch", stacked=True)
        if resolved == "torch":
            flat = _torch_flatten_order(flat, True, layers)
    else:
        flat = {k.replace(".", "/") if "/" not in k else k: v for k, v in flat.items()}
    n = {v.shape[0] for v in flat.values()}
    if len(n) > 1:
        raise ParamsError(
            f"{p}: read as a population, but its leaves disagree on the number of networks "
            f"({sorted(n)}); pass stacked=False (--stacked=no)"
        )
    if list(flat) == sorted(flat):  # a checkpoint stores sorted keys: its run's config gives the order
        order = next((o for d in [p, *p.parents][:4] if (o := rundir.execution_order(d))), None)
        if order:
            flat = {**{k: flat[k] for k in order if k in flat}, **flat}
    return flat


def _looks_stacked(flat: dict[str, np.ndarray], layout: str) -> bool:
    biases = [v.ndim for k, v in flat.items() if _leaf_name(k) == "bias"]
    if biases:
        return all(d == 2 for d in biases)
    kernels = [v.ndim for k, v in flat.items() if _leaf_name(k) in ("kernel", "weight")]
    return layout == "flax" and bool(kernels) and all(d in (3, 5) for d in kernels)


def stack(populations: Sequence[tuple[str, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Concatenates flat populations along the networks axis, checking their structures match.

    Args:
      populations: `(source name, flat params with the networks axis first)` pairs.

    Returns:
      One flat dict whose leaves stack every population's networks, in order.

    Raises:
      ParamsError: naming the first leaf (in the sources' order) that is missing from one source or
        whose per-network shape differs from the first source's.
    """
    (name0, ref), rest = populations[0], populations[1:]
    for name, pop in rest:
        for k in list(dict.fromkeys([*ref, *pop])):  # first source's order, then the new leaves
            if k not in pop:
                raise ParamsError(f"{name}: structure differs from {name0}: leaf {k!r} is missing")
            if k not in ref:
                raise ParamsError(f"{name}: structure differs from {name0}: leaf {k!r} is not in {name0}")
            if pop[k].shape[1:] != ref[k].shape[1:]:
                raise ParamsError(
                    f"{name}: structure differs from {name0}: leaf {k!r} has shape "
                    f"{pop[k].shape[1:]}, {name0} has {ref[k].shape[1:]}"
                )
    return {k: np.concatenate([pop[k] for _, pop in populations], 0) for k in ref}


def load(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    layout: str = "auto",
    stacked: bool | None = None,
    layers: Sequence[str] | None = None,
    with_sources: bool = False,
) -> Any:
    """Reads parameter files into one stacked population (networks axis first).

    Args:
      paths: one path or several; each holds one network or a stacked population (see `read`).
      layout: "auto", "torch" or "flax" (see the module docstring).
      stacked: whether the files hold stacked populations (None: detect per file).
      layers: chain order of kernel layers, for PyTorch conv -> Linear row order (see `read`).
      with_sources: also return the source path of every network.

    Returns:
      Nested parameters `{"Dense_0": {"kernel": (N, din, dout), ...}}` in Flax layout, the
      networks of the files concatenated in the order given; ready for `stats`, `strength`,
      `distances` and `analysis.analyze_params`; with `with_sources`, `(params, [path per network])`.

    Raises:
      ParamsError: a file cannot be read, or the files' structures differ (the message names
        the first mismatching leaf).

    Example:
      >>> params = load(["seed0.safetensors", "seed1.safetensors"])   # PyTorch state dicts
      >>> stats.compute_statistics(params)
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ParamsError("no parameter files given")
    pops = [(str(p), read(p, layout=layout, stacked=stacked, layers=layers)) for p in paths]
    params = rundir.unflatten_params(stack(pops))
    if with_sources:
        return params, [name for name, pop in pops for _ in range(next(iter(pop.values())).shape[0])]
    return params


# ============================== analysis of imported files ==============================


def write_figures(
    params: Mapping[str, Any], out: str | os.PathLike, *, dists: Mapping[str, np.ndarray] | None = None, bins: int = 64
) -> list[Path]:
    """Writes `figures/histograms.png` (each network's weight distribution, first 12 leaves) and,
    given `{group: dist_NxN}`, `figures/distances.png` (heatmaps of up to 8 groups, leaves first).

    Args:
      params: stacked parameters, networks axis first.
      out: output directory; the figures go to `out/figures/`.
      dists: optional `{group: dist_NxN}` of one metric.
      bins: histogram bins (edges shared by all networks of a leaf).

    Returns:
      The written paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from jaxweights import stats

    out = Path(out) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    hists = dict(list(stats.histograms(params, bins=bins).items())[:12])
    cols = min(4, len(hists))
    rows = -(-len(hists) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (leaf, (edges, h_NxB)) in zip(axes.flat, hists.items()):
        centers = (edges[:-1] + edges[1:]) / 2
        for h in h_NxB:
            ax.plot(centers, h, lw=0.8, alpha=0.6)
        ax.set_title(leaf, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(hists) :]:
        ax.axis("off")
    fig.suptitle("weight distributions (one line per network)", fontsize=9)
    fig.tight_layout()
    written.append(out / "histograms.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    if dists:
        # Leaves first, then layers and the whole network; at most 8 panels.
        dists = dict(sorted(dists.items(), key=lambda kv: (kv[0] == stats.ALL, "/" not in kv[0]))[:8])
        cols = min(4, len(dists))
        rows = -(-len(dists) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.8 * rows), squeeze=False)
        for ax, (leaf, d) in zip(axes.flat, dists.items()):
            im = ax.imshow(d, cmap="viridis")
            ax.set_title(leaf, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            fig.colorbar(im, ax=ax, fraction=0.046)
        for ax in list(axes.flat)[len(dists) :]:
            ax.axis("off")
        fig.tight_layout()
        written.append(out / "distances.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def analyze_files(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    layout: str = "auto",
    stacked: bool | None = None,
    layers: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    block_size: int = 64,
    figures: bool = True,
):
    """Statistics, node strength, distances and figures of networks trained elsewhere.

    The same analysis as `jaxweights analyze` (`analysis.analyze_params`), for parameter
    files: writes `out/stats.csv`, `out/node_strength.npz`, `out/distances/<metric>.npz`,
    `out/networks.csv` (network, source file) and `out/figures/*.png`.

    Args:
      paths: parameter files (see `load`); their networks are stacked into one population.
      out: output directory (created).
      layout, stacked, layers: see `load`.
      metrics: distance metrics (default: `analysis.DEFAULT_METRICS`).
      block_size: networks per block of the N×N distance computation.
      figures: also write the figures.

    Returns:
      `(params, stats_table)`: the stacked parameters and the tidy statistics table.
    """
    import pandas as pd

    from jaxweights import analysis

    out = Path(out)
    params, srcs = load(paths, layout=layout, stacked=stacked, layers=layers, with_sources=True)
    log.info("analysing %d networks from %d file(s)", len(srcs), len(list(paths)))
    out.mkdir(parents=True, exist_ok=True)
    table = analysis.analyze_params(params, out, metrics=metrics, block_size=block_size, layers=layers)
    atomic.write_csv(out / "networks.csv", pd.DataFrame({"network": np.arange(len(srcs)), "source": srcs}))
    if figures:
        chosen = list(metrics) if metrics else list(analysis.DEFAULT_METRICS)
        first = out / "distances" / f"{chosen[0]}.npz"
        dists = None
        if first.exists():
            with np.load(first) as z:
                dists = {k: z[k] for k in z.files}
        write_figures(params, out, dists=dists)
    return params, table
