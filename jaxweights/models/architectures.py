"""Flax architectures of the zoo: MLP (DNN), CNN (also the Small CNN Zoo CNN) and a ViT.

Every model is a plain ``flax.linen`` module with pure ``init``/``apply``. Parameter paths are
stable and readable (``Dense_0/kernel``, ``Conv_1/bias``, ``encoder_0/attention/query/kernel``),
because the statistics address layers by these paths (:mod:`jaxweights.models.paths`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxweights.models.init import kernel_init
from jaxweights.models.layers import ACTIVATIONS, Conv, max_pool_2x2

Array = jax.Array


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
