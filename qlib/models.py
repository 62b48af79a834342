"""The course models: a small LeNet-style CNN, a wider teacher, an MLP and a ResNet-18.

Introduced in notebook 00. Every model is built only from ``Conv2d``, ``BatchNorm2d``,
``ReLU``, ``MaxPool2d``, ``Flatten`` and ``Linear`` in ``nn.Sequential`` containers, with
a separate ReLU module at each use, so that module-swapping tools (fake quant, BN
folding, channel pruning) and graph-based quantizers can treat every layer on its own.

Shapes for the course model on 28x28 digits::

    (N, 1, 28, 28) -conv5x5 pad2-> (N, 16, 28, 28) -pool-> (N, 16, 14, 14)
    -conv5x5-> (N, 32, 10, 10) -pool-> (N, 32, 5, 5) -flatten-> (N, 800)
    -fc-> (N, 128) -fc-> (N, 10) logits

>>> course_model()(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SmallCNN", "course_model", "teacher_model", "student_model", "mlp",
           "resnet18", "BasicBlock", "MODELS", "build_model"]


class SmallCNN(nn.Module):
    """LeNet-style CNN with batch norm: two conv-BN-ReLU-pool stages and two linear layers.

    ``features`` and ``classifier`` are ``nn.Sequential``; ``conv -> bn -> relu -> pool``
    per stage. ``channels=(16, 32), hidden=128`` is the course baseline (about 117k
    parameters); wider settings make the teacher, narrower ones the distillation student.
    """

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 128,
                 num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 dropout: float = 0.0) -> None:
        super().__init__()
        c1, c2 = channels
        if min(c1, c2, hidden, num_classes, in_channels) < 1:
            raise ValueError(f"channel, hidden and class counts must be >= 1, got "
                             f"channels={channels}, hidden={hidden}, classes={num_classes}")
        if image_size < 12:
            raise ValueError(f"image_size must be at least 12 pixels, got {image_size}")
        self.config = dict(channels=(c1, c2), hidden=hidden, num_classes=num_classes,
                           in_channels=in_channels, image_size=image_size, dropout=dropout)
        side = ((image_size // 2) - 4) // 2  # 28 -> 14 -> 10 -> 5
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2, bias=False), nn.BatchNorm2d(c1),
            nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * side * side, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, classes)
        return self.classifier(self.features(x))


def course_model(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> SmallCNN:
    """The course baseline: ``SmallCNN(channels=(16, 32), hidden=128)``."""
    return SmallCNN((16, 32), 128, num_classes, in_channels, image_size)


def teacher_model(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> SmallCNN:
    """A wider teacher for distillation: ``SmallCNN(channels=(64, 128), hidden=512)`` with dropout 0.3.

    With the defaults (10 classes, 1x28x28 images) it holds 1,850,826 parameters, about 16x
    the course model's 117,114 (count them with ``sum(p.numel() for p in m.parameters())``).
    Notebook 06 uses the course model as its teacher instead (see there why).
    """
    return SmallCNN((64, 128), 512, num_classes, in_channels, image_size, dropout=0.3)


def student_model(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> SmallCNN:
    """A narrow student for distillation: ``SmallCNN(channels=(4, 8), hidden=32)``.

    With the defaults (10 classes, 1x28x28 images) it holds 7,686 parameters. Introduced in
    notebook 06.
    """
    return SmallCNN((4, 8), 32, num_classes, in_channels, image_size)


def mlp(num_classes: int = 10, in_features: int = 784, hidden: int = 256) -> nn.Sequential:
    """A two-layer perceptron on flattened images, the simplest model to quantize by hand."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block with two separate ReLU modules (torchvision reuses one).

    Graph-based quantizers (PT2E's X86 inductor quantizer) annotate each module call, so a
    ReLU module used twice per block breaks them; giving each use its own module fixes it.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = block.conv1, block.bn1, nn.ReLU()
        self.conv2, self.bn2, self.relu2 = block.conv2, block.bn2, nn.ReLU()
        self.downsample = block.downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + identity)


def resnet18(num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-18 (random weights, nothing downloaded) with separate ReLUs.

    Used in notebook 03 for speed measurements on a model large enough for int8 kernels to
    matter (11.7M parameters, 1.8 GMACs at 224x224).
    """
    # lazy: torchvision is only needed to check this ResNet against its reference
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, name)
        setattr(model, name, nn.Sequential(*[BasicBlock(b) for b in layer]))
    return model


#: Builders by name, for the report's ``--model`` choice.
MODELS = {"course": course_model, "teacher": teacher_model, "student": student_model}


def build_model(name: str, num_classes: int = 10, in_channels: int = 1,
                image_size: int = 28) -> nn.Module:
    """Build one of :data:`MODELS` by name for images of the given shape."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {sorted(MODELS)}")
    return MODELS[name](num_classes, in_channels, image_size)
