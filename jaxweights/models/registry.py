"""The models by name: ``MODELS`` and :func:`make_model`, which validates options against the data."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jaxweights.config.schema import MODELS, closest
from jaxweights.models.architectures import CNN, MLP, ViT
from jaxweights.models.init import INITS
from jaxweights.models.layers import ACTIVATIONS

Array = jax.Array


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
        options = sorted(fields - {"num_classes", "init_scheme", "dtype"})
        hint = closest(unknown[0], options)
        raise ValueError(
            f"model.{unknown[0]}: not an option of model {name!r}{f' ({hint})' if hint else ''}; "
            f"options are {', '.join(options)}"
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
