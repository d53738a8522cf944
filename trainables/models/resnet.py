"""CIFAR ResNets (He et al. 2016) as in the CIFAR distillation literature: 3x3 stem, three stages, no max-pool."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, c_in = [], widths[0]
        for i, c_out in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x, return_features: bool = False):
        x = F.relu(self.bn1(self.conv1(x)))
        feats = [x]
        for stage in (self.layer1, self.layer2, self.layer3):
            x = stage(x)
            feats.append(x)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return (logits, feats) if return_features else logits


def _resnet(depth, widths):
    def build(num_classes: int) -> nn.Module:
        return CifarResNet(depth, widths, num_classes)
    return build


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)  # the "x4" variants of RepDistiller


@register_model
def resnet8(num_classes): return _resnet(8, _NARROW)(num_classes)
@register_model
def resnet14(num_classes): return _resnet(14, _NARROW)(num_classes)
@register_model
def resnet20(num_classes): return _resnet(20, _NARROW)(num_classes)
@register_model
def resnet32(num_classes): return _resnet(32, _NARROW)(num_classes)
@register_model
def resnet44(num_classes): return _resnet(44, _NARROW)(num_classes)
@register_model
def resnet56(num_classes): return _resnet(56, _NARROW)(num_classes)
@register_model
def resnet110(num_classes): return _resnet(110, _NARROW)(num_classes)
@register_model
def resnet8x4(num_classes): return _resnet(8, _WIDE)(num_classes)
@register_model
def resnet32x4(num_classes): return _resnet(32, _WIDE)(num_classes)


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv 1x1, 3x3, 1x1 with 4x expansion (He et al. 2016, "Identity mappings", ResNet v2)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * self.expansion
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + skip


class CifarPreActResNet50(nn.Module):
    """ResNet50 v2 with a CIFAR stem (one 3x3 convolution, no max-pool): seed 001's (Chen et al. 2021,
    Table 4) second teacher. Stage widths 64/128/256/512 (x4 out), blocks 3/4/6/3; maps at 32 px: 64x32x32
    (stem), 256x32x32, 512x16x16, 1024x8x8, 2048x4x4 (after the final BN-ReLU)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        c_in, stages = 64, []
        for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            layer = []
            for j in range(blocks):
                layer.append(PreActBottleneck(c_in, width, 2 if (i > 0 and j == 0) else 1))
                c_in = width * PreActBottleneck.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x, return_features: bool = False):
        x = self.conv1(x)
        feats = [x]
        for stage in (self.layer1, self.layer2, self.layer3):
            x = stage(x)
            feats.append(x)
        x = F.relu(self.bn(self.layer4(x)))
        feats.append(x)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return (logits, feats) if return_features else logits


@register_model
def resnet50(num_classes): return CifarPreActResNet50(num_classes)
