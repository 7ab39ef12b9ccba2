"""Your own model in regbench: a small CNN whose BatchNorm and dropout the regimen places.

    regbench model=custom model._target_=my_model.build model.width=32 regularizer=bn_dropout

(run it from this folder, or with it on PYTHONPATH). regbench calls `build` with keyword arguments:
`regimen` (where BatchNorm and dropout go), the task's shape information (image tasks: `num_classes`,
`in_channels`, `image_size`) and every other `model.*` key (here `width`). It must return an nn.Module.
"""
from torch import nn

# Optional: what this model supports, which regbench checks before anything trains. INPUTS: the tasks whose
# inputs it takes ("images": cifar10, cifar100, svhn, ..., imagefolder); a mismatch is refused in one line.
# RESIDUAL_BLOCKS: whether it applies regularizer.stochastic_depth (it has none; without this line
# regbench finds out once the model is built, from whether it asked placement.drop_path).
INPUTS = "images"
RESIDUAL_BLOCKS = False


def build(*, regimen, num_classes, in_channels, image_size, width=32):
    # Three numbered conv layers. By default BN goes after each conv and dropout after the last one;
    # regularizer.*.layers (all, first:2, [1,3], ...) choose other layers.
    placement = regimen.place(3, default_norm=(1, 2, 3), default_dropout=(3,))
    layers, channels = [], in_channels
    for i in (1, 2, 3):
        out = width * i
        layers += [nn.Conv2d(channels, out, 3, padding=1),
                   placement.norm(i, out),        # BatchNorm2d where the regimen selects layer i, else Identity
                   nn.ReLU(),
                   nn.MaxPool2d(2) if image_size >= 2 ** i else nn.Identity(),
                   placement.dropout(i)]          # Dropout(p) where selected, else Identity
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
