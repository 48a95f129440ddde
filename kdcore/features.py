"""Intermediate features by module path, taken with forward hooks, for any model the service builds.

FitNets and attention transfer compare a teacher layer with a student layer. Layers are named by their
module path (`layer3`, `body`, `features.12`, as in `model.named_modules()`), so the same code serves
the built-in architectures, every torchvision classifier and .pt2 teachers (whose module tree
`torch.export.unflatten` restores). When the user names no layer, `default_feature_layer` picks the
model's last feature block from a dry run (see its docstring for the rule).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from kdcore.errors import FeatureError

_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten, nn.Dropout,
          nn.Identity)


def hook_root(model: nn.Module) -> nn.Module:
    """The module whose sub-module paths users name. Wrappers (a .pt2 program) expose theirs."""
    root = getattr(model, "feature_root", None)
    return root() if callable(root) else model


def layer_paths(model: nn.Module) -> list[str]:
    return [name for name, _ in hook_root(model).named_modules() if name]


def resolve_layer(model: nn.Module, path: str, what: str = "model") -> nn.Module:
    root = hook_root(model)
    try:
        return root.get_submodule(path)
    except AttributeError:
        tops = [name for name, _ in root.named_children()]
        raise FeatureError(f"{what} has no layer {path!r}; its top-level layers are {', '.join(tops)} "
                           "(deeper ones by dotted path, e.g. 'layer3.1')") from None


def _first_tensor(out: object) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


@contextmanager
def capture(model: nn.Module, paths: list[str], what: str = "model") -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward of `model` fills the yielded dict with {path: that layer's output}
    (the latest call's output when a layer runs more than once)."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:
        def hook(_m: nn.Module, _i: object, out: object, path: str = path) -> None:
            t = _first_tensor(out)
            if t is not None:
                store[path] = t
        handles.append(resolve_layer(model, path, what).register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def default_feature_layer(model: nn.Module, x: torch.Tensor, what: str = "model") -> str:
    """The model's last feature block, found by a dry run over its top-level children.

    The rule: among the root's direct children that ran, in call order, and are not pooling, flatten,
    dropout or identity layers, take the last one whose output has spatial or token dimensions
    (ndim 3, or 4 with more than one position: a conv stage, a transformer encoder); a model without
    any (an MLP) gives the last child before the one that produced the logits. For a CIFAR ResNet that
    is `layer3`, for a torchvision ResNet `layer4`, for VGG and MobileNet `features`, for ViT `encoder`,
    for the `mlp` built-in `body`.
    """
    root = hook_root(model)
    calls: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    handles = []
    for name, child in root.named_children():
        def hook(m: nn.Module, _i: object, out: object, name: str = name) -> None:
            t = _first_tensor(out)
            if t is not None:
                calls.append((name, m, tuple(t.shape)))
        handles.append(child.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    ran = [(n, shape) for n, m, shape in calls if not isinstance(m, _POOLS)]
    # a map pooled to 1x1 is a vector in disguise (also how pooling shows in an unflattened .pt2 program)
    spatial = [n for n, shape in ran if len(shape) == 3 or (len(shape) == 4 and shape[2] * shape[3] > 1)]
    if spatial:
        return spatial[-1]
    flat = [n for n, shape in ran if len(shape) == 2]
    if len(flat) >= 2:
        return flat[-2]  # the last one produced the logits
    raise FeatureError(f"cannot find a feature layer in {what} automatically; name one in "
                       "distillation.params (see GET /v1/catalog)")


def as_vector(f: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C] by global average pooling, [B, T, D] -> [B, D] by the token mean, [B, D] as is."""
    if f.ndim == 4:
        return f.mean(dim=(2, 3))
    if f.ndim == 3:
        return f.mean(dim=1)
    return f.flatten(1)
