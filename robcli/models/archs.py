"""Architectures. Every builder takes ``num_classes`` and ``input_shape`` and returns an ``nn.Module``
mapping inputs (already normalized) to logits. Tiny members exist for fast tests.
"""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F

from robcli.models.registry import register_model


def _flat_dim(input_shape) -> int:
    return int(math.prod(input_shape))


class MLP(nn.Module):
    """Fully connected ReLU net: ``depth`` hidden layers of ``width`` units (the paper's 4 x 64 for 2-D data)."""

    def __init__(self, num_classes: int, input_shape, width: int = 64, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = _flat_dim(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """A ~90k-parameter CNN for small images (8x8 digits up to 32x32): 3 conv-BN-ReLU blocks, 2 pools, 2 FC."""

    def __init__(self, num_classes: int, input_shape, width: int = 32, fc: int = 128):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), fc), nn.ReLU(), nn.Linear(fc, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


# ---- CIFAR-style ResNet (He et al. 2016; 3x3 stem, no max-pool), as in TRADES / RobustBench --------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes: int, input_shape, width: int = 64):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], 2)
        self.linear = nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(self, block, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# ---- WideResNet (Zagoruyko & Komodakis 2016), the RobustBench/TRADES layout -------------------------------


class WideBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride, drop=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop = drop
        self.equal = in_planes == out_planes
        self.convShortcut = None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equal:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.drop > 0:
            out = F.dropout(out, p=self.drop, training=self.training)
        out = self.conv2(out)
        return (x if self.equal else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride, drop=0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop) for i in range(nb_layers)]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, num_classes: int, input_shape, depth: int = 28, widen_factor: int = 10, drop: float = 0.0):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        assert (depth - 4) % 6 == 0, "WideResNet depth must be 6n+4"
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(input_shape[0], ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def _need_image(name, input_shape):
    if len(input_shape) != 3:
        from robcli.errors import ModelError

        raise ModelError(f"architecture {name!r} needs image inputs (C,H,W); this data set has shape {tuple(input_shape)}")


@register_model("mlp", "4 x 64 ReLU MLP (ERA paper, synthetic data)")
def mlp(num_classes, input_shape, **kw):
    return MLP(num_classes, input_shape, **kw)


@register_model("tiny_mlp", "2 x 16 MLP for tests", tiny=True)
def tiny_mlp(num_classes, input_shape, **kw):
    return MLP(num_classes, input_shape, width=16, depth=2)


@register_model("small_cnn", "~90k-parameter CNN for digits-size images")
def small_cnn(num_classes, input_shape, **kw):
    _need_image("small_cnn", input_shape)
    return SmallCNN(num_classes, input_shape, **kw)


@register_model("tiny_cnn", "tiny CNN for tests", tiny=True)
def tiny_cnn(num_classes, input_shape, **kw):
    _need_image("tiny_cnn", input_shape)
    return SmallCNN(num_classes, input_shape, width=4, fc=16)


@register_model("resnet18", "CIFAR-style ResNet-18")
def resnet18(num_classes, input_shape, width: int = 64, **kw):
    _need_image("resnet18", input_shape)
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, input_shape, width=width)


@register_model("resnet18_tiny", "ResNet-18 layout at width 4 (tests)", tiny=True)
def resnet18_tiny(num_classes, input_shape, **kw):
    _need_image("resnet18_tiny", input_shape)
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, input_shape, width=4)


@register_model("resnet50", "CIFAR-style ResNet-50")
def resnet50(num_classes, input_shape, width: int = 64, **kw):
    _need_image("resnet50", input_shape)
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, input_shape, width=width)


@register_model("wrn-28-10", "WideResNet-28-10")
def wrn_28_10(num_classes, input_shape, **kw):
    _need_image("wrn-28-10", input_shape)
    return WideResNet(num_classes, input_shape, 28, 10)


@register_model("wrn-34-10", "WideResNet-34-10")
def wrn_34_10(num_classes, input_shape, **kw):
    _need_image("wrn-34-10", input_shape)
    return WideResNet(num_classes, input_shape, 34, 10)


@register_model("wrn_tiny", "WideResNet-10-1 (tests)", tiny=True)
def wrn_tiny(num_classes, input_shape, **kw):
    _need_image("wrn_tiny", input_shape)
    return WideResNet(num_classes, input_shape, 10, 1)
