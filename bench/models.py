"""The benchmark shapes: the issue's three MLPs, the dashboard's default model, and a ResNet-18."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainer.model import MLP


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), with `head` as the classifier."""

    def __init__(self, num_classes: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(self.stem(x)), 1), 1))


@dataclass(frozen=True)
class Shape:
    build: Callable[[], nn.Module]
    input: tuple[int, ...]
    batch: int


SHAPES: dict[str, Shape] = {
    "dashboard": Shape(lambda: MLP(16, [256, 256], 8), (16,), 64),
    "mlp_small": Shape(lambda: MLP(64, [256, 256], 8), (64,), 256),
    "mlp_mid": Shape(lambda: MLP(512, [2048] * 3, 8), (512,), 2048),
    "mlp_large": Shape(lambda: MLP(1024, [4096] * 4, 8), (1024,), 8192),
    "resnet18": Shape(lambda: ResNet18(8), (3, 32, 32), 512),
}
