"""VGG16 with batch norm, CIFAR variant (docs/method.md §1).

13 conv3x3 + BN + ReLU layers in five blocks separated by 2x2 max-pools, then a head.
At width 1 the conv stack has 64,64 | 128,128 | 256x3 | 512x3 | 512x3 = 4224 filters.
"""
from __future__ import annotations

import torch
from torch import nn

from .names import HEADS, VGG16_PLAN

#: The paper's names for the 13 conv layers, in network order.
LAYER_NAMES = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
)
#: Kept channels: {conv layer index: kept channel indices of the unpruned network}.
Kept = dict[int, list[int]]
#: Hidden width of the authors' 3-layer head at width 1.
MLP_HIDDEN = 4096


def layer_widths(width: float = 1.0) -> list[int]:
    """Filters of each of the 13 conv layers for a width multiplier (at least 1 each)."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    return [max(1, round(c * width)) for c in VGG16_PLAN if c != "M"]


class VGG16(nn.Module):
    """VGG16-BN for 3x32x32 inputs.

    Args:
        num_classes: outputs of the last linear layer.
        width: multiplier on every conv layer's filter count (and on the MLP head's hidden size).
        head: ``"mlp"`` is the authors' head, AdaptiveAvgPool(1) -> Linear(C, 4096w) -> ReLU ->
            Dropout -> Linear(4096w, 4096w) -> ReLU -> Dropout -> Linear(4096w, classes);
            ``"linear"`` is the 1-layer head of the pruning literature,
            AdaptiveAvgPool(1) -> Linear(C, classes).

    ``features`` is an ``nn.Sequential`` of Conv2d, BatchNorm2d, ReLU and MaxPool2d modules, the same
    layout as torchvision's ``vgg16_bn().features``; :meth:`convs` lists the 13 conv layers.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, head: str = "mlp", dropout: float = 0.5):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.num_classes, self.width, self.head_kind = num_classes, width, head
        widths = iter(layer_widths(width))
        layers: list[nn.Module] = []
        cin = 3
        for item in VGG16_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = next(widths)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if head == "mlp":
            hidden = max(1, round(MLP_HIDDEN * width))
            self.classifier = nn.Sequential(
                nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.classifier = nn.Sequential(nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, 32, 32) normalised images -> (B, num_classes) logits."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    def convs(self) -> list[nn.Conv2d]:
        """The 13 conv layers in network order."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def norms(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm following each conv layer."""
        return [m for m in self.features if isinstance(m, nn.BatchNorm2d)]

    def relus(self) -> list[nn.ReLU]:
        """The ReLU following each conv layer: its output is the layer's feature maps."""
        return [m for m in self.features if isinstance(m, nn.ReLU)]


def build_model(num_classes: int = 10, width: float = 1.0, head: str = "mlp") -> VGG16:
    """Convenience constructor used by the pipeline; see :class:`VGG16`."""
    return VGG16(num_classes=num_classes, width=width, head=head)


def count_filters(model: VGG16) -> int:
    """Total number of conv filters (output channels of the 13 conv layers)."""
    return sum(c.out_channels for c in model.convs())


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
