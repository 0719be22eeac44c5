"""jaxweights: train populations of neural networks in one compiled JAX program and study their weights.

The package is laid out by the data flow, each subpackage importing only those to its left:

    config -> data -> models -> train -> io -> weights -> dynamics -> claims -> report -> pipelines -> cli
"""

from jaxweights import _deprecated

_deprecated.install()
