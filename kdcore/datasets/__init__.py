"""Datasets for distillation jobs: a registry of loaders that return whole datasets as tensors.

    load_dataset("mnist", root)            -> TensorData (float32 NCHW normalized, int64 labels)
    dataset_info("mnist")                  -> DatasetInfo, without reading data
    dataset_catalog()                      -> JSON-ready list for GET /v1/catalog
    augment_batch(x, info, generator)      -> the "standard" augmentation, on x's device

Built-ins read from the operator's dataset root (``<root>/mnist/``, ``<root>/cifar10/`` ...);
``npz`` and ``imagefolder`` read an uploaded artifact.
"""
from __future__ import annotations

from kdcore.registry import import_family

from .augment import augment_batch, augment_params
from .base import Data, DatasetInfo, Split, TensorData, TensorSplit
from .catalog import DATASETS, dataset_catalog, dataset_info, load_dataset, register_dataset
from .errors import DatasetError
from .idx import read_idx, write_idx
from .imagefolder import inspect_imagefolder
from .npz import inspect_npz

import_family(__name__, __path__)  # every loader module registers itself (mnist.py, cifar.py, ...)

__all__ = [
    "DATASETS",
    "Data",
    "Split",
    "TensorSplit",
    "DatasetError",
    "DatasetInfo",
    "TensorData",
    "augment_batch",
    "augment_params",
    "dataset_catalog",
    "dataset_info",
    "inspect_imagefolder",
    "inspect_npz",
    "load_dataset",
    "read_idx",
    "register_dataset",
    "write_idx",
]
