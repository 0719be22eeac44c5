"""Flax models of the zoo (MLP, CNN, Small CNN Zoo CNN, ViT), their initialisers and parameter paths."""

from jaxweights.models.architectures import (
    ACTIVATIONS,
    CNN,
    INITS,
    MLP,
    MODELS,
    Conv,
    EncoderBlock,
    ViT,
    kernel_init,
    make_model,
    max_pool_2x2,
    scale_kernels,
)
from jaxweights.models.paths import (
    execution_order,
    flatten,
    is_kernel,
    layer_depths,
    layer_of,
    layer_order,
    param_order,
    unflatten,
)

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "INITS",
    "MLP",
    "MODELS",
    "Conv",
    "EncoderBlock",
    "ViT",
    "kernel_init",
    "make_model",
    "max_pool_2x2",
    "scale_kernels",
    "execution_order",
    "flatten",
    "is_kernel",
    "layer_depths",
    "layer_of",
    "layer_order",
    "param_order",
    "unflatten",
]
