"""CIFAR-style networks from the KD literature's benchmark tables (CRD/RepDistiller, DKD/mdistiller).

ResNets: He et al. 2016's CIFAR ResNets (3x3 stem, three stages of basic blocks, depth 6n+2) with
1x1-conv + BN projection shortcuts where the shape changes, as in RepDistiller, so the parameter
counts match those tables (resnet56: 0.86M, resnet8x4: 1.23M, resnet32x4: 7.43M with 100 classes).
WideResNets: Zagoruyko & Komodakis 2016, pre-activation blocks, depth 6n+4, widths 16k/32k/64k.

Every network ends in adaptive average pooling, so any input of 8x8 or more works (8x8 reaches the
pool as 2x2). Top-level modules are named stem, layer1, layer2, layer3, pool, fc so that feature
methods (FitNets, AT, ...) can hook stages by module path.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from kdcore.models._registry import register_model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # no bias: a BatchNorm follows (or precedes, in the pre-activation blocks)
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _init_weights(model: nn.Module) -> None:
    # He initialisation for ReLU networks; BN starts as the identity.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """stem (conv3x3-BN-ReLU) -> layer1..3 (n basic blocks each, strides 1, 2, 2) -> pool -> fc."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], in_channels: int, num_classes: int):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.depth, self.widths = depth, widths
        self.stem = nn.Sequential(
            _conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def _register_resnet(name: str, depth: int, widths: tuple[int, int, int, int], description: str) -> None:
    def factory(*, num_classes: int, in_channels: int, **_: Any) -> nn.Module:
        return CifarResNet(depth, widths, in_channels, num_classes)

    factory.__name__ = name
    register_model(name, description=description)(factory)


_SLIM = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)  # RepDistiller's "x4": 4x the slim widths per stage, a 32-wide stem
for _depth in (20, 32, 56, 110):
    _register_resnet(f"cifar_resnet{_depth}", _depth, _SLIM,
                     f"CIFAR ResNet-{_depth} (He et al. 2016): stage widths 16/32/64, basic blocks")
for _depth in (8, 32):
    _register_resnet(f"cifar_resnet{_depth}x4", _depth, _X4,
                     f"CIFAR ResNet-{_depth}x4 (RepDistiller): stem 32, stage widths 64/128/256")


class WRNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dropout: float = Field(default=0.0, ge=0.0, lt=1.0,
                           description="dropout between the two convs of a block")


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 plus shortcut (1x1 conv when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.relu = nn.ReLU()  # not in-place: the pre-activation also feeds the projection shortcut
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        # Zagoruyko & Komodakis project the activated input when the shape changes, else add x.
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """stem (conv3x3, 16) -> layer1..3 (widths 16k/32k/64k) -> bn, relu -> pool -> fc."""

    def __init__(self, depth: int, widen: int, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.depth, self.widen = depth, widen
        self.stem = _conv3x3(in_channels, widths[0])
        self.layer1 = self._stage(widths[0], widths[1], n, 1, dropout)
        self.layer2 = self._stage(widths[1], widths[2], n, 2, dropout)
        self.layer3 = self._stage(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])  # pre-activation nets end with one more BN-ReLU
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        blocks = [PreActBlock(cin, cout, stride, dropout)]
        blocks += [PreActBlock(cout, cout, 1, dropout) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = self.relu(self.bn(x))
        return self.fc(self.flatten(self.pool(x)))


def _register_wrn(depth: int, widen: int) -> None:
    name = f"wrn_{depth}_{widen}"

    def factory(*, num_classes: int, in_channels: int, dropout: float = 0.0, **_: Any) -> nn.Module:
        return WideResNet(depth, widen, in_channels, num_classes, dropout)

    factory.__name__ = name
    register_model(name, params=WRNParams, description=(
        f"WideResNet-{depth}-{widen} (Zagoruyko & Komodakis 2016): pre-activation, "
        f"widths {16 * widen}/{32 * widen}/{64 * widen}"))(factory)


for _depth, _widen in ((16, 2), (40, 1), (40, 2)):
    _register_wrn(_depth, _widen)
