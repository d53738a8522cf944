"""CIFAR VGGs with BatchNorm as in RepDistiller: five conv blocks, 4x4 last map for 32x32 inputs."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.models.registry import register_model

_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


def _block(c_in: int, widths: list[int]) -> nn.Sequential:
    layers = []
    for i, c_out in enumerate(widths):
        if i > 0:
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out)]
        c_in = c_out
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    def __init__(self, cfg: list[list[int]], num_classes: int):
        super().__init__()
        blocks, c_in = [], 3
        for widths in cfg:
            blocks.append(_block(c_in, widths))
            c_in = widths[-1]
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x, return_features: bool = False):
        # Max-pool after the first three blocks (32->16->8->4); the fourth pool only fires for
        # inputs of 64 px and more, so 32x32 inputs keep a 4x4 last map as in RepDistiller.
        feats = []
        for i, block in enumerate(self.blocks):
            x = F.relu(block(x))
            feats.append(x)
            if i < 3 or (i == 3 and x.shape[-1] >= 8):
                x = F.max_pool2d(x, 2)
        logits = self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return (logits, feats) if return_features else logits


@register_model
def vgg8(num_classes): return CifarVGG(_CFG["vgg8"], num_classes)
@register_model
def vgg11(num_classes): return CifarVGG(_CFG["vgg11"], num_classes)
@register_model
def vgg13(num_classes): return CifarVGG(_CFG["vgg13"], num_classes)
