"""Small models: a multi-layer perceptron, LeNet-5 and a plain CNN."""
from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from kdcore.models._registry import register_model

# Bounds keep a spec submitted over HTTP from asking for a layer that cannot fit in memory.
Width = Annotated[int, Field(strict=True, gt=0, le=65536)]


class MLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: list[Width] = Field(
        default=[800, 800], max_length=64,
        description="widths of the hidden layers, in order; [] gives a linear (softmax regression) model",
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout after each hidden layer")
    input_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the input pixels "
                                 "(Hinton et al. 2012 and 2015's MNIST teacher: 0.2)")
    max_norm: float | None = Field(default=None, gt=0.0, le=1000.0, description="max-norm constraint: each "
                                   "hidden unit's incoming weight vector is rescaled to an L2 norm of at most "
                                   "this after every step (Srivastava et al. 2014 used 3-4); null: none")


class MLP(nn.Module):
    """Flatten -> Dropout(input_dropout) -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear (module `fc`).

    With `max_norm`, every hidden Linear's rows (a unit's incoming weights) are projected back onto the
    ball of that L2 radius before each training forward, i.e. after every optimizer step: the
    constraint of the dropout papers, which lets a large learning rate run without the weights growing.
    """

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.0,
                 input_shape: tuple[int, ...] | None = None, input_dropout: float = 0.0,
                 max_norm: float | None = None):
        super().__init__()
        self.in_features = in_features
        self.input_shape = input_shape  # only for the error message below
        self.max_norm = max_norm
        self.flatten = nn.Flatten()
        # no parameters: a checkpoint without input dropout loads into a model with it, and back
        self.input_drop = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        if x.shape[1] != self.in_features:
            # An MLP is tied to its input size; say so rather than leave a matmul shape error.
            raise ValueError(f"mlp was built for inputs of shape {self.input_shape} ({self.in_features} "
                             f"values per sample) but got {x.shape[1]} values per sample")
        if self.max_norm is not None and self.training:
            self._project()
        return self.fc(self.body(self.input_drop(x)))

    @torch.no_grad()
    def _project(self) -> None:
        assert self.max_norm is not None
        for m in self.body:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.renorm(m.weight, 2, 0, self.max_norm))


@register_model("mlp", params=MLPParams)
def mlp(*, num_classes: int, in_channels: int, input_size: tuple[int, int] = (32, 32),
        hidden: list[int] | None = None, dropout: float = 0.0, input_dropout: float = 0.0,
        max_norm: float | None = None, **_: Any) -> nn.Module:
    """Multi-layer perceptron on the flattened image (Hinton et al. 2015's MNIST student is [800, 800])."""
    h, w = input_size
    hidden = [800, 800] if hidden is None else list(hidden)
    return MLP(in_channels * h * w, hidden, num_classes, dropout, input_shape=(in_channels, h, w),
               input_dropout=input_dropout, max_norm=max_norm)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, for any input size.

    The paper feeds 32x32 images (28x28 MNIST digits centred in a 32x32 field), so smaller inputs are
    zero-padded to 32x32, which makes 28x28 MNIST exactly the paper's setting and lets 8x8 inputs
    through; larger inputs are average-pooled to the 5x5 map the 400-wide fc layer expects. The
    parameter count is the same for every input size.
    """

    min_size = 32

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.pool = nn.AdaptiveAvgPool2d((5, 5))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        ph, pw = max(0, self.min_size - h), max(0, self.min_size - w)
        if ph or pw:  # centre the image, as the paper does with MNIST
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = self.flatten(self.pool(x))
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc(x)


@register_model("lenet5")
def lenet5(*, num_classes: int, in_channels: int, **_: Any) -> nn.Module:
    """LeNet-5 (conv6-pool-conv16-pool-fc120-fc84-fc); inputs under 32x32 are zero-padded to 32x32."""
    return LeNet5(in_channels, num_classes)


class ConvNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: list[Annotated[int, Field(strict=True, gt=0, le=4096)]] = Field(
        default=[32, 64], min_length=1, max_length=8,
        description="output channels of each stage (3x3 conv, batch norm, ReLU, 2x2 max-pool)")
    hidden: Width = Field(default=128, description="width of the hidden fully connected layer")


class ConvNet(nn.Module):
    """A plain CNN for small images: stages `features.<i>` of conv-BN-ReLU-pool, then `head`
    (average pool to 3x3, Linear, ReLU) and the classifier `fc`. Its last stage is the feature block
    FitNets and AT pair by default."""

    def __init__(self, in_channels: int, num_classes: int, channels: list[int], hidden: int):
        super().__init__()
        stages: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            stages.append(nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                        nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)))
            c_in = c
        self.features = nn.Sequential(*stages)
        # pooling to 3x3 rather than 1x1 keeps where a stroke is, which digits need; any input size works
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(c_in * 9, hidden),
                                  nn.ReLU(inplace=True))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.features(x)))


@register_model("convnet", params=ConvNetParams)
def convnet(*, num_classes: int, in_channels: int, channels: list[int] | None = None, hidden: int = 128,
            **_: Any) -> nn.Module:
    """A small, fast CNN (conv stages of `channels`, then `hidden` units): a teacher or student for
    MNIST-like and CIFAR-like data where an MLP has no spatial features to transfer."""
    return ConvNet(in_channels, num_classes, [32, 64] if channels is None else list(channels), hidden)
