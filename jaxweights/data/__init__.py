"""Image classification datasets as uint8 NHWC numpy arrays, loaded offline first (see `datasets.load`)."""

from jaxweights.data.datasets import ENV_VAR, SYSTEM_DIR, load, load_dataset
from jaxweights.data.specs import DATASETS, SPECS, DataError, Dataset, DatasetSpec, normalization, spec
from jaxweights.data.subsets import SUBSET_SEED, stratified_indices

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "SPECS",
    "SUBSET_SEED",
    "SYSTEM_DIR",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "load",
    "load_dataset",
    "normalization",
    "spec",
    "stratified_indices",
]
