"""Flax models of the zoo (MLP, CNN, Small CNN Zoo CNN, ViT), their initialisers and parameter paths."""

from jaxweights.models.architectures import CNN, MLP, EncoderBlock, ViT
from jaxweights.models.init import INITS, kernel_init, scale_kernels
from jaxweights.models.layers import ACTIVATIONS, Conv, max_pool_2x2
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
from jaxweights.models.registry import MODELS, make_model

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
