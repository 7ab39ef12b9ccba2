"""CNN-13, the "ConvLarge" of Laine & Aila (2017), Mean Teacher and VAT.

    conv3x3 128 x3 - maxpool2 - conv3x3 256 x3 - maxpool2 - conv3x3 512 (valid, 8->6)
    - conv1x1 256 - conv1x1 128 - global average pool - linear

Layers are numbered 1..9 (the convs) for the regimen's placement: BN goes right after a selected conv
(before its activation); dropout goes after a selected conv's activation, or after the pooling
stage when one follows it. The default dropout layers are 3 and 6: after each pooling stage.
With BN after every conv and width 1.0 the model has 3,123,850 parameters.
"""
from __future__ import annotations

from collections import OrderedDict

from omegaconf import DictConfig
from torch import Tensor, nn

from regbench import checks
from regbench.errors import ConfigError
from regbench.models.common import check_activation_and_init, init_weights, make_activation
from regbench.regimen import NO_PLACEMENT, Placement, Regimen

# (out_channels, kernel, padding) per conv layer; "pool" marks a 2x2 max-pool after the previous conv.
ARCHITECTURE: tuple = ((128, 3, 1), (128, 3, 1), (128, 3, 1), "pool",
                       (256, 3, 1), (256, 3, 1), (256, 3, 1), "pool",
                       (512, 3, 0), (256, 1, 0), (128, 1, 0))
N_LAYERS = 9
DEFAULT_NORM_LAYERS = tuple(range(1, N_LAYERS + 1))
DEFAULT_DROPOUT_LAYERS = (3, 6)  # followed by the two pooling stages


class CNN13(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 placement: Placement | None = None, activation: str = "leaky_relu",
                 negative_slope: float = 0.1) -> None:
        super().__init__()
        placement = placement or NO_PLACEMENT
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        index = 0
        spec = list(ARCHITECTURE)
        for position, item in enumerate(spec):
            if item == "pool":
                continue
            index += 1
            out, kernel, padding = item
            out = max(1, round(out * width))
            # Conv keeps its bias even under BN: that is how the reference count of 3,123,850 arises.
            layers[f"conv{index}"] = nn.Conv2d(channels, out, kernel, padding=padding)
            if placement.has_norm(index):
                layers[f"bn{index}"] = placement.norm(index, out, dims=2)
            layers[f"act{index}"] = make_activation(activation, negative_slope)
            pool_follows = position + 1 < len(spec) and spec[position + 1] == "pool"
            if pool_follows:
                layers[f"pool{index}"] = nn.MaxPool2d(2)
            if placement.has_dropout(index):
                layers[f"drop{index}"] = placement.dropout(index)
            channels = out
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


MIN_IMAGE_SIZE = 12  # two 2x2 poolings, then a 3x3 conv without padding: it needs 3 x 3 pixels left


def build(*, regimen: Regimen, num_classes: int, in_channels: int, image_size: int | None = None, width: float = 1.0,
          activation: str = "leaky_relu", negative_slope: float = 0.1, init: str = "default") -> CNN13:
    """CNN-13 for images of image_size x image_size pixels (any size >= 12: it pools globally at the end)."""
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"model=cnn13 needs images of at least {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} pixels (its "
                          f"seventh conv is 3x3 without padding after two 2x2 poolings); these are {image_size} x "
                          f"{image_size}: resize them with data.image_size or use model=resnet18")
    placement = regimen.place(N_LAYERS, default_norm=DEFAULT_NORM_LAYERS, default_dropout=DEFAULT_DROPOUT_LAYERS)
    model = CNN13(num_classes, in_channels, width, placement, activation, negative_slope)
    init_weights(model, init, activation, negative_slope)
    return model


# What this model supports (regbench.models.Capabilities): the tasks whose Task.inputs are "images",
# and regularizer.stochastic_depth not (no residual blocks).
INPUTS = "images"
RESIDUAL_BLOCKS = False


def validate_config(cfg: DictConfig, regimen: Regimen) -> None:
    check_activation_and_init(cfg)
    checks.number(cfg, "model.width", low=0, low_open=True, high=8)
    regimen.check_layers(N_LAYERS, "cnn13: layers 1..9 are its convs")
