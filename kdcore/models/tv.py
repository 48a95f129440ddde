"""torchvision's classification models, each under its torchvision name (family "torchvision").

They are registered on the registry's first lookup (see _ModelRegistry), and registering only
records a factory: no model is built and no weights are ever downloaded. Models start from random
initialisation with the dataset's class count; when the dataset is not RGB the first Conv2d is
replaced by one taking the dataset's channel count. Some of these networks downsample too much for
8x8 or 32x32 images (e.g. squeezenet, inception_v3); they fail when built or run, with torch's error.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict
from torch import nn

from kdcore.models._registry import InvalidModelKwargsError, ModelFactory, _ModelRegistry


class TorchvisionParams(BaseModel):
    """Keyword arguments passed on to torchvision.models.get_model (free-form; `weights` is refused)."""

    model_config = ConfigDict(extra="allow")


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first Conv2d (in module registration order, i.e. the input conv for torchvision's
    classifiers) for one with the same hyper-parameters but `in_channels` inputs."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            new = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                padding=module.padding, dilation=module.dilation, groups=module.groups,
                bias=module.bias is not None, padding_mode=module.padding_mode,
                device=module.weight.device, dtype=module.weight.dtype,
            )
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path), attr, new)
            return model
    raise ValueError(f"{type(model).__name__} has no Conv2d whose input channels could be changed")


def _make_factory(tv_name: str) -> ModelFactory:
    def factory(*, num_classes: int, in_channels: int, input_size: tuple[int, int] = (32, 32),
                **kwargs: Any) -> nn.Module:
        import torchvision.models

        h, w = input_size
        # Trivial per-family defaults that make small inputs and plain-logit training work:
        if tv_name.startswith("vit_"):  # ViT's position embedding is sized for image_size (224)
            patch = int(tv_name.rsplit("_", 1)[1])
            if h == w and h % patch == 0:
                kwargs.setdefault("image_size", h)
        elif tv_name == "maxvit_t":  # likewise sized for input_size
            kwargs.setdefault("input_size", (h, w))
        elif tv_name in ("googlenet", "inception_v3"):
            kwargs.setdefault("aux_logits", False)  # else train() mode returns a namedtuple, not logits
            kwargs.setdefault("init_weights", True)  # silences torchvision's FutureWarning
        try:
            model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
        except TypeError as exc:  # an unknown kwarg surfaces here: torchvision kwargs are free-form
            raise InvalidModelKwargsError(tv_name, [{"loc": [], "msg": str(exc)}]) from exc
        if in_channels != 3:
            replace_first_conv(model, in_channels)
        return model

    factory.__name__ = tv_name
    return factory


_RST_LINK = re.compile(r"`([^`<]+?)\s*<([^>]+)>`_+")


def _describe(builder: Any, tv_name: str) -> str:
    doc = (builder.__doc__ or "").strip()
    first = " ".join(doc.split("\n\n")[0].split()) if doc else ""
    first = _RST_LINK.sub(r"\1 (\2)", first)  # `Title <url>`__ -> Title (url)
    return f"torchvision.models.{tv_name}: {first}" if first else f"torchvision.models.{tv_name}"


def register_torchvision(registry: _ModelRegistry) -> None:
    """Add every torchvision classification model (not detection/segmentation/video/quantized)."""
    import torchvision.models

    # Describe them all first, then add: a failure part-way must not leave half of them registered
    # (a retry would then find the rest "registered twice").
    found = [(n, _describe(torchvision.models.get_model_builder(n), n))
             for n in torchvision.models.list_models(module=torchvision.models)
             if not registry.has_loaded(n)]  # a builtin of the same name wins
    for tv_name, description in found:
        registry.add(tv_name, _make_factory(tv_name), params=TorchvisionParams, family="torchvision",
                     description=description)
