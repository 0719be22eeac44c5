"""Layers shared by the architectures: activations, the im2col/XLA convolution and 2x2 max pooling.

Convolutions default to im2col by slicing (``impl="im2col"``): the k×k shifted slices of the
padded input are concatenated on the channel axis and multiplied with the reshaped kernel in one
matmul. On XLA:CPU a ``lax.conv`` inside a scan runs about 20× slower than outside one, and
vmapping it over weights gives a slow grouped convolution; the matmul form vmaps into a batched
matmul instead. The kernel keeps the usual ``(kh, kw, in, out)`` layout either way, and
``impl="xla"`` uses ``lax.conv_general_dilated`` with the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """2×2 max pooling with stride 2 by reshape (odd trailing rows/columns are dropped).

    Args:
      x: (batch, H, W, C) feature map.

    Returns:
      (batch, H // 2, W // 2, C) maxima.
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
