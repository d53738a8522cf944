"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR: pre-activation blocks, widths 16k/32k/64k."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.models.registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages, c_in = [], widths[0]
        for i, c_out in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x, return_features: bool = False):
        x = self.conv1(x)
        feats = [x]
        x = self.block1(x)
        feats.append(x)
        x = self.block2(x)
        feats.append(x)
        # The last map is taken after the final BN+ReLU, i.e. what global pooling sees.
        x = F.relu(self.bn(self.block3(x)))
        feats.append(x)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return (logits, feats) if return_features else logits


@register_model
def wrn_16_2(num_classes): return WideResNet(16, 2, num_classes)
@register_model
def wrn_40_2(num_classes): return WideResNet(40, 2, num_classes)
