"""ResNet-18 in its CIFAR form (He et al. 2016; the variant of most CIFAR papers): a 3x3 stem of 64
channels with stride 1 and no max-pool, four stages of two basic blocks (64, 128, 256, 512 channels,
the last three starting with stride 2), global average pooling and a linear classifier. 11,173,962
parameters for 10 classes with BatchNorm after every conv.

Layers for the regimen's placement: 1 = the stem conv, 2..17 = the two convs of each block in order.
BN goes right after a selected conv (a block's 1x1 projection shortcut takes the BN of the block's
second conv); a conv without BN keeps a bias. Dropout goes after a selected conv's activation; its
default is layer 17 only, which puts it after the pooling, right before the classifier. Stochastic depth
(regularizer.stochastic_depth) drops the residual branch of blocks 1..8, at a rate rising linearly to
the one given for block 8.
"""
from __future__ import annotations

from omegaconf import DictConfig
from torch import Tensor, nn

from regbench import checks
from regbench.models.common import INITS, init_weights
from regbench.regimen import NO_PLACEMENT, Placement, Regimen

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of the stage's first block)
BLOCKS_PER_STAGE = 2
N_LAYERS = 1 + 2 * BLOCKS_PER_STAGE * len(STAGES)  # 17
DEFAULT_NORM_LAYERS = tuple(range(1, N_LAYERS + 1))
DEFAULT_DROPOUT_LAYERS = (N_LAYERS,)


def _conv(in_channels: int, out_channels: int, stride: int, placement: Placement, layer: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not placement.has_norm(layer))


class BasicBlock(nn.Module):
    """Two 3x3 convs (layers `first` and `first + 1`) with a residual connection; a 1x1 projection
    shortcut where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, first: int, placement: Placement,
                 last: bool, drop_path: nn.Module | None = None) -> None:
        super().__init__()
        second = first + 1
        self.conv1 = _conv(in_channels, out_channels, stride, placement, first)
        self.bn1 = placement.norm(first, out_channels)
        self.drop1 = placement.dropout(first)
        self.conv2 = _conv(out_channels, out_channels, 1, placement, second)
        self.bn2 = placement.norm(second, out_channels)
        # the last block's dropout comes after the pooling (ResNet.forward), right before the classifier
        self.drop2 = nn.Identity() if last else placement.dropout(second)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=not placement.has_norm(second)),
                placement.norm(second, out_channels))
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = drop_path or nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop1(self.relu(self.bn1(self.conv1(x))))
        h = self.drop_path(self.bn2(self.conv2(h)))
        return self.drop2(self.relu(h + self.shortcut(x)))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, placement: Placement | None = None) -> None:
        super().__init__()
        placement = placement or NO_PLACEMENT
        self.stem = nn.Sequential(_conv(in_channels, 64, 1, placement, 1), placement.norm(1, 64),
                                  nn.ReLU(inplace=True), placement.dropout(1))
        blocks, channels, layer = [], 64, 2
        n_blocks = BLOCKS_PER_STAGE * len(STAGES)
        for stage, (out_channels, stride) in enumerate(STAGES):
            for b in range(BLOCKS_PER_STAGE):
                last = layer + 1 == N_LAYERS
                drop_path = placement.drop_path(len(blocks) + 1, n_blocks)
                blocks.append(BasicBlock(channels, out_channels, stride if b == 0 else 1, layer, placement, last,
                                         drop_path))
                channels, layer = out_channels, layer + 2
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = placement.dropout(N_LAYERS)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.pool(self.blocks(self.stem(x))).flatten(1)))


def build(*, regimen: Regimen, num_classes: int, in_channels: int, image_size: int | None = None,
          init: str = "kaiming") -> ResNet18:
    """ResNet-18 for images of any size (it pools globally); `init` as every model's (default Kaiming, as
    He et al.)."""
    placement = regimen.place(N_LAYERS, default_norm=DEFAULT_NORM_LAYERS, default_dropout=DEFAULT_DROPOUT_LAYERS)
    model = ResNet18(num_classes, in_channels, placement)
    init_weights(model, init, "relu")
    return model


# What this model supports (regbench.models.Capabilities): the tasks whose Task.inputs are "images",
# and regularizer.stochastic_depth (it has residual blocks).
INPUTS = "images"
RESIDUAL_BLOCKS = True


def validate_config(cfg: DictConfig, regimen: Regimen) -> None:
    checks.choice(cfg, "model.init", INITS)
    regimen.check_layers(N_LAYERS, "resnet18: 1 = the stem conv, 2..17 = the blocks' convs")
