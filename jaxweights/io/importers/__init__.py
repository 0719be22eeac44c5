"""Reading networks trained elsewhere: orbax, Flax msgpack, `.npz` and `.safetensors` files.

    formats       FORMATS, ParamsError, detect_format (and the raw tree of each format)
    torch_layout  LAYOUTS, TORCH_BUFFERS, detect_layout, torch_to_flax_kernel
    load          read, stack, load

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

from jaxweights.io.importers.files import load, read, stack
from jaxweights.io.importers.formats import FORMATS, ParamsError, detect_format
from jaxweights.io.importers.torch_layout import LAYOUTS, TORCH_BUFFERS, detect_layout, torch_to_flax_kernel

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "TORCH_BUFFERS",
    "ParamsError",
    "detect_format",
    "detect_layout",
    "load",
    "read",
    "stack",
    "torch_to_flax_kernel",
]
