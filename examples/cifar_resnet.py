"""CIFAR ResNets (He et al. 2016, section 4.2) as timm models: an example of a teacher of your own.

`cdeit precompute-teacher --teacher-module examples/cifar_resnet.py --teacher resnet20_cifar --checkpoint W`
imports this file, whose `@register_model` functions add `resnet20_cifar` and `resnet56_cifar` to timm's
registry; cdeit then builds, loads and preprocesses them exactly like a timm model. What a module needs:
- a model class with timm's classifier interface: `num_classes`, `num_features`, `forward_features`,
  `forward_head(x, pre_logits=...)`, `get_classifier`, `reset_classifier`;
- `default_cfgs` (timm's pretrained_cfg): input size, mean, std, interpolation, and the classifier's name;
- entrypoints that build through `build_model_with_cfg`, so timm can load a `--checkpoint` into them.

The architecture, written for cdeit from the paper: 6n+2 layers; a 3x3 stem convolution to 16 channels; three
stages of n basic blocks with 16, 32 and 64 channels, the first block of stages 2 and 3 with stride 2; global
average pooling and a linear classifier. The shortcuts have no parameters (the paper's option A): identity, or,
where the shape changes, the input subsampled by 2 and zero-padded with the new channels, half on each side.
Module names follow the state dict of the ResNet-20 in ../shared/models (conv1, bn1, layer1..3, linear), so
that checkpoint loads with strict keys. Inputs are 32x32 and pass through unresized ('nearest' at scale 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["CifarResNet", "resnet20_cifar", "resnet56_cifar"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what the published ResNet-20 was trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus a parameter-free shortcut, then ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.stride = stride
        self.pad = (out_chs - in_chs) // 2  # new channels, split evenly between both sides

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Identity, or subsample-and-zero-pad where the block changes resolution and width (option A)."""
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A 6n+2-layer CIFAR ResNet with timm's classifier interface (num_features = 64)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has 6n+2 layers; depth {depth} is not of that form.")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = WIDTHS[-1]
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        stages, chs = [], WIDTHS[0]
        for i, width in enumerate(WIDTHS):
            blocks = [BasicBlock(chs if b == 0 else width, width, 2 if (i > 0 and b == 0) else 1) for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            chs = width
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)  # He et al. 2015, as the paper
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.linear = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) -> (B, 64, 8, 8)."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling, then the classifier unless `pre_logits`."""
        x = x.mean(dim=(2, 3))
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg() -> dict:
    """timm's pretrained_cfg: no downloadable weights (pass --checkpoint), 32px input, 'nearest' = no resize."""
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "nearest",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "conv1",
        "classifier": "linear",
        "license": "bsd-2-clause",
    }


default_cfgs = generate_default_cfgs({"resnet20_cifar": _cfg(), "resnet56_cifar": _cfg()})


def _create(variant: str, pretrained: bool, depth: int, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, depth=depth, **kwargs)


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR (n = 3, 0.27M parameters)."""
    return _create("resnet20_cifar", pretrained, depth=20, **kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR (n = 9, 0.85M parameters)."""
    return _create("resnet56_cifar", pretrained, depth=56, **kwargs)
