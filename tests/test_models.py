import pytest
import torch
from torch import nn

from qlib.models import (BasicBlock, build_model, course_model, mlp, resnet18, student_model,
                         teacher_model)


@pytest.mark.parametrize("builder", [course_model, teacher_model, student_model])
def test_shapes(builder):
    assert builder()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_cifar_shaped_input():
    assert course_model(10, 3, 32)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_sizes_ordered():
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(student_model()) < n(course_model()) < n(teacher_model())
    assert n(course_model()) == 117_114


def test_course_model_has_bn_and_separate_relus():
    m = course_model()
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == 2
    relus = [x for x in m.modules() if isinstance(x, nn.ReLU)]
    assert len(relus) == len({id(r) for r in relus}) == 3


def test_mlp():
    assert mlp()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_resnet18_separate_relus_same_function_as_torchvision():
    from torchvision.models import resnet18 as tv_resnet18

    torch.manual_seed(0)
    ours = resnet18(10).eval()
    blocks = [b for b in ours.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 8 and all(b.relu1 is not b.relu2 for b in blocks)
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in tv_resnet18(num_classes=10).parameters())
    # same weights, same outputs as torchvision's block structure
    ref = tv_resnet18(num_classes=10).eval()
    ref.load_state_dict({k.replace("relu1", "relu").replace("relu2", "relu"): v
                         for k, v in ours.state_dict().items()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg")
    with pytest.raises(ValueError, match=">= 1"):
        course_model(num_classes=0)
    with pytest.raises(ValueError, match="image_size"):
        course_model(image_size=8)
