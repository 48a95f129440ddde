"""What FitNets and AT share: layer pairs (named, or found automatically in any two registry architectures),
and features taken from a torch.export teacher."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kdcore.methods import METHODS, Distiller
from kdcore.models import create_model
from kdcore.spec import JobSpec


def test_named_layers_override_and_unknown_layer_names_the_choices(make: Callable[..., Distiller]) -> None:
    d = make("fitnets", {"pairs": [{"teacher": "body.0", "student": "body.2"}]})
    assert d.pairs == [("body.0", "body.2")]
    with pytest.raises(ValueError, match="no layer 'layer9'.*body"):
        make("at", {"pairs": [{"teacher": "layer9", "student": "body"}]})


def test_feature_methods_pair_any_two_registry_architectures_by_default() -> None:
    x = torch.randn(4, 3, 32, 32)
    for t_arch, s_arch in [("cifar_resnet20", "mlp"), ("convnet", "cifar_resnet8x4"), ("resnet18", "lenet5"),
                           ("mlp", "convnet")]:
        teacher = create_model(t_arch, num_classes=10, in_channels=3, input_size=(32, 32))
        for method in ("fitnets", "at"):
            student = create_model(s_arch, num_classes=10, in_channels=3, input_size=(32, 32), **(
                {"hidden": [32]} if s_arch == "mlp" else {}))
            params = JobSpec.model_validate({"teacher": {"checkpoint": "a"}, "student": {"architecture": "mlp"},
                                             "dataset": {"name": "cifar10"},
                                             "distillation": {"method": method}}).distillation.params
            d = METHODS.create(method, student, [teacher], 4.0, 0.9, params)
            d.setup(x)
            d.train()
            _, terms = d.forward_train(x, torch.tensor([0, 1, 2, 3]), 0.5)
            sum(terms.values()).backward()
            assert all(torch.isfinite(v) for v in terms.values()), (t_arch, s_arch, method)


def test_features_from_an_exported_teacher(tmp_path: Path) -> None:
    from kdcore.checkpoints import load_teacher

    model = create_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=(32, 32)).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, tmp_path / "t.pt2")
    teacher = load_teacher(tmp_path / "t.pt2", "export", architecture=None, kwargs={}, num_classes=10,
                           in_channels=3, input_size=(32, 32), device=torch.device("cpu"))
    student = create_model("cifar_resnet8x4", num_classes=10, in_channels=3, input_size=(32, 32))
    d = METHODS.create("fitnets", student, [teacher], 4.0, 0.9, {"pairs": [], "hint_weight": 1.0, "kd": True})
    x = torch.randn(3, 3, 32, 32)
    d.setup(x)
    assert d.pairs == [("layer3", "layer3")]
    out = d.teacher_forward(x)
    with torch.no_grad():
        want = model.layer3(model.layer2(model.layer1(model.stem(x))))
    assert torch.allclose(out.features["layer3"], want, atol=1e-5)
    assert torch.allclose(out.logits[0], model(x), atol=1e-5)
