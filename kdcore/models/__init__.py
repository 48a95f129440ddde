"""The architecture registry: builtin students/teachers plus every torchvision classifier.

    from kdcore.models import create_model
    net = create_model("cifar_resnet20", num_classes=10, in_channels=1, input_size=(28, 28))

Class count, input channels and input size always come from the dataset; kwargs only choose the
architecture's own parameters (validated by the entry's pydantic model, listed by model_catalog()).
Importing this package does not import torchvision: its models are registered on first lookup.
"""
from __future__ import annotations

from kdcore.models._registry import (
    DEFAULT_INPUT_SIZE,
    MODELS,
    InvalidModelKwargsError,
    ModelFactory,
    NoParams,
    count_params,
    create_model,
    model_catalog,
    register_model,
    validate_model_kwargs,
)
from kdcore.models.tv import TorchvisionParams, register_torchvision, replace_first_conv
from kdcore.registry import UnknownNameError, import_family

import_family(__name__, __path__)  # every module here registers its architectures (simple.py, cifar.py, ...)
MODELS.set_loader(register_torchvision)

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "MODELS",
    "InvalidModelKwargsError",
    "ModelFactory",
    "NoParams",
    "TorchvisionParams",
    "UnknownNameError",
    "count_params",
    "create_model",
    "model_catalog",
    "register_model",
    "replace_first_conv",
    "validate_model_kwargs",
]
