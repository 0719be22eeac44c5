"""Flax models of the zoo: MLP (DNN), CNN, the Small-CNN-Zoo CNN and a ViT.

Every model is a plain `flax.linen` module with pure `init`/`apply`. Parameter paths are
stable and readable (`Dense_0/kernel`, `Conv_1/bias`, `encoder_0/attention/query/kernel`),
because the statistics address layers by these paths.

Convolutions default to im2col by slicing (`conv_impl="im2col"`): the k×k shifted slices of the
padded input are concatenated on the channel axis and multiplied with the reshaped kernel in one
matmul. On XLA:CPU a `lax.conv` inside a scan runs about 20× slower than outside one, and
vmapping it over weights gives a slow grouped convolution; the matmul form vmaps into a batched
matmul instead. The kernel keeps the usual `(kh, kw, in, out)` layout either way, and
`conv_impl="xla"` uses `lax.conv_general_dilated` with the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "silu": nn.silu,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
    "identity": lambda x: x,
}

INITS = ("normal", "truncated_normal", "uniform", "fan_in", "fan_out", "fan_avg")


def kernel_init(scheme: str) -> nn.initializers.Initializer:
    """Kernel initialiser of unit scale for `scheme`.

    The dynamic `init_scale` hyperparameter multiplies the kernels after this initialiser
    (see `scale_kernels`), so a scale is a plain multiplier on the weights' standard deviation.

    Args:
      scheme: "normal" (N(0, 1)), "truncated_normal" (N(0, 1) cut at ±2, std 1), "uniform"
        (U(-1, 1)), or "fan_in" / "fan_out" / "fan_avg": variance scaling with variance
        1/fan (truncated normal), so `init_scale=sqrt(2)` with "fan_in" is He init and
        `init_scale=1` with "fan_avg" is Glorot.
    """
    if scheme == "normal":
        return nn.initializers.normal(1.0)
    if scheme == "truncated_normal":
        return _truncated_normal_unit
    if scheme == "uniform":
        return _uniform_sym
    if scheme in ("fan_in", "fan_out", "fan_avg"):
        return nn.initializers.variance_scaling(1.0, scheme, "truncated_normal")
    raise ValueError(f"unknown init scheme {scheme!r}; expected one of {', '.join(INITS)}")


def _uniform_sym(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0)


# Standard deviation of a unit normal truncated to [-2, 2].
_TRUNC_STD = 0.87962566103423978


def _truncated_normal_unit(key, shape, dtype=jnp.float32):
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) / jnp.asarray(_TRUNC_STD, dtype)


def scale_kernels(params: Any, scale: Array) -> Any:
    """Multiplies every leaf named `kernel` by `scale` (biases, norms and embeddings untouched)."""

    def f(path, leaf):
        name = getattr(path[-1], "key", None)
        return leaf * scale.astype(leaf.dtype) if name == "kernel" else leaf

    return jax.tree_util.tree_map_with_path(f, params)


def _conv_im2col(x: Array, kernel: Array, stride: int, padding: str) -> Array:
    """k×k convolution as shifted slices + one matmul (see module docstring)."""
    kh, kw, cin, cout = kernel.shape
    b, h, w, _ = x.shape
    if padding == "SAME":
        out_h, out_w = -(-h // stride), -(-w // stride)
        pad_h = max((out_h - 1) * stride + kh - h, 0)
        pad_w = max((out_w - 1) * stride + kw - w, 0)
        x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    else:
        out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    cols = [
        x[:, i : i + (out_h - 1) * stride + 1 : stride, j : j + (out_w - 1) * stride + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1)  # (b, out_h, out_w, kh*kw*cin), ordered (i, j, c)
    return patches @ kernel.reshape(kh * kw * cin, cout)


class Conv(nn.Module):
    """2-D convolution, NHWC, kernel `(kh, kw, in, out)`, implemented as im2col or `lax.conv`."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: str = "SAME"
    impl: str = "im2col"
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if self.impl == "im2col":
            y = _conv_im2col(x, kernel, self.stride, self.padding)
        elif self.impl == "xla":
            y = jax.lax.conv_general_dilated(
                x, kernel, (self.stride, self.stride), self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        else:
            raise ValueError(f"unknown conv_impl {self.impl!r}; expected 'im2col' or 'xla'")
        return y + bias.astype(dtype)


def max_pool_2x2(x: Array) -> Array:
    """2×2 max pooling with stride 2 by reshape (odd trailing rows/columns are dropped)."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class MLP(nn.Module):
    """Fully connected network (DNN): flatten, `hidden` Dense layers with `activation`, Dense head."""

    hidden: Sequence[int] = (128, 64)
    num_classes: int = 10
    activation: str = "relu"
    init_scheme: str = "fan_in"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = ACTIVATIONS[self.activation]
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=kernel_init(self.init_scheme), dtype=self.dtype)(x))
        return nn.Dense(self.num_classes, kernel_init=kernel_init(self.init_scheme), dtype=self.dtype)(x)


class CNN(nn.Module):
    """Stack of conv layers (each optionally followed by 2×2 max pooling), then Dense layers.

    `head="flatten"` flattens the last feature map; `head="gap"` averages it over space
    (global average pooling), as the Small CNN Zoo does.
    """

    channels: Sequence[int] = (32, 64)
    kernel_size: int = 3
    strides: Sequence[int] | int = 1
    pool: Sequence[bool] | bool = True
    dense: Sequence[int] = (128,)
    head: str = "flatten"
    num_classes: int = 10
    activation: str = "relu"
    init_scheme: str = "fan_in"
    conv_impl: str = "im2col"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = ACTIVATIONS[self.activation]
        n = len(self.channels)
        strides = [self.strides] * n if isinstance(self.strides, int) else list(self.strides)
        pools = [self.pool] * n if isinstance(self.pool, bool) else list(self.pool)
        for c, s, p in zip(self.channels, strides, pools):
            x = act(
                Conv(
                    c,
                    self.kernel_size,
                    s,
                    impl=self.conv_impl,
                    kernel_init=kernel_init(self.init_scheme),
                    dtype=self.dtype,
                )(x)
            )
            if p:
                x = max_pool_2x2(x)
        x = x.mean(axis=(1, 2)) if self.head == "gap" else x.reshape(x.shape[0], -1)
        for width in self.dense:
            x = act(nn.Dense(width, kernel_init=kernel_init(self.init_scheme), dtype=self.dtype)(x))
        return nn.Dense(self.num_classes, kernel_init=kernel_init(self.init_scheme), dtype=self.dtype)(x)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: LN → multi-head self-attention → LN → MLP, both residual."""

    num_heads: int
    mlp_dim: int
    init_scheme: str
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = nn.LayerNorm(name="norm1", dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=kernel_init(self.init_scheme), dtype=self.dtype, name="attention"
        )(y, y)
        x = x + y
        y = nn.LayerNorm(name="norm2", dtype=self.dtype)(x)
        y = nn.Dense(self.mlp_dim, kernel_init=kernel_init(self.init_scheme), dtype=self.dtype, name="mlp_in")(y)
        y = nn.Dense(x.shape[-1], kernel_init=kernel_init(self.init_scheme), dtype=self.dtype, name="mlp_out")(
            nn.gelu(y)
        )
        return x + y


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021) sized for 28×28 and 32×32 images.

    Patches are cut by reshape and embedded by a Dense layer (`embedding`), which equals a
    convolution with kernel = stride = patch size.
    """

    patch_size: int = 4
    width: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    pooling: str = "cls"  # "cls" token or "mean"
    num_classes: int = 10
    init_scheme: str = "fan_in"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        p = self.patch_size
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
        x = nn.Dense(self.width, kernel_init=kernel_init(self.init_scheme), dtype=self.dtype, name="embedding")(x)
        if self.pooling == "cls":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(x.dtype), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.width))
        x = x + pos.astype(x.dtype)
        for i in range(self.depth):
            x = EncoderBlock(
                self.num_heads, int(self.width * self.mlp_ratio), self.init_scheme, self.dtype, name=f"encoder_{i}"
            )(x)
        x = nn.LayerNorm(name="norm", dtype=self.dtype)(x)
        x = x[:, 0] if self.pooling == "cls" else x.mean(axis=1)
        return nn.Dense(self.num_classes, kernel_init=kernel_init(self.init_scheme), dtype=self.dtype, name="head")(x)


MODELS = ("mlp", "cnn", "small_cnn_zoo", "vit")


def make_model(
    name: str,
    *,
    num_classes: int,
    image_shape: tuple[int, int, int],
    init: str = "fan_in",
    dtype: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Builds a model by name, checking its options against the image shape.

    Args:
      name: one of `MODELS`.
      num_classes: size of the output layer.
      image_shape: (H, W, C) of the inputs, used to validate e.g. the ViT patch size.
      init: kernel initialisation scheme, one of `INITS`.
      dtype: computation dtype (None: float32); parameters are always float32.
      **kwargs: the model's own fields (`hidden` for "mlp", `channels`, `dense`, ... for "cnn",
        `patch_size`, `width`, ... for "vit").

    Returns:
      A `flax.linen.Module`.

    Raises:
      ValueError: unknown name, unknown option, or an impossible shape, naming the option.
    """
    if init not in INITS:
        raise ValueError(f"model.init: unknown init scheme {init!r}; expected one of {', '.join(INITS)}")
    classes = {"mlp": MLP, "cnn": CNN, "small_cnn_zoo": CNN, "vit": ViT}
    if name not in classes:
        raise ValueError(f"model.name: unknown model {name!r}; expected one of {', '.join(MODELS)}")
    cls = classes[name]
    if name == "small_cnn_zoo":
        # Unterthiner et al. 2020: 3 conv layers of 16 channels, 3×3, stride 2, GAP, dense head.
        kwargs = dict(dict(channels=(16, 16, 16), kernel_size=3, strides=2, pool=False, dense=(), head="gap"), **kwargs)
    fields = set(cls.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"model.{unknown[0]}: not an option of model {name!r}; options are {', '.join(sorted(fields - {'num_classes', 'init_scheme', 'dtype'}))}"
        )
    act = kwargs.get("activation")
    if act is not None and act not in ACTIVATIONS:
        raise ValueError(f"model.activation: unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    h, w, _ = image_shape
    if name == "vit":
        p = kwargs.get("patch_size", ViT.patch_size)
        if p <= 0 or h % p or w % p:
            raise ValueError(f"model.patch_size: {p} does not divide the {h}×{w} images")
        width, heads = kwargs.get("width", ViT.width), kwargs.get("num_heads", ViT.num_heads)
        if heads <= 0 or width % heads:
            raise ValueError(f"model.num_heads: {heads} does not divide model.width={width}")
        if kwargs.get("pooling", "cls") not in ("cls", "mean"):
            raise ValueError(f"model.pooling: expected 'cls' or 'mean', got {kwargs['pooling']!r}")
    for key in ("hidden", "channels", "dense"):
        if key in kwargs and any(int(v) <= 0 for v in kwargs[key]):
            raise ValueError(f"model.{key}: widths must be positive, got {tuple(kwargs[key])}")
    if "conv_impl" in kwargs and kwargs["conv_impl"] not in ("im2col", "xla"):
        raise ValueError(f"model.conv_impl: expected 'im2col' or 'xla', got {kwargs['conv_impl']!r}")
    for key in ("hidden", "channels", "dense", "strides", "pool"):
        if key in kwargs and isinstance(kwargs[key], list):
            kwargs[key] = tuple(kwargs[key])
    return cls(num_classes=num_classes, init_scheme=init, dtype=dtype, **kwargs)
