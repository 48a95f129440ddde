"""The architecture registry: builtins build and run on every dataset shape, kwargs are validated,
torchvision models adapt to the dataset, and the catalog is JSON-ready."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from kdcore.models import (
    MODELS,
    InvalidModelKwargsError,
    TorchvisionParams,
    UnknownNameError,
    count_params,
    create_model,
    model_catalog,
    register_model,
    replace_first_conv,
    validate_model_kwargs,
)
from kdcore.models._registry import _ModelRegistry
from kdcore.models.tv import register_torchvision

# (in_channels, H, W) of sklearn digits, MNIST and CIFAR: the range every builtin must cover.
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
BUILTINS = sorted(e.name for e in MODELS if e.meta["family"] == "builtin")


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield


def test_builtins_include_the_required_architectures() -> None:
    required = {"mlp", "lenet5", "cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "cifar_resnet8x4",
                "cifar_resnet32x4", "wrn_16_2", "wrn_40_2"}
    assert required <= set(BUILTINS)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_builds_and_runs_on_every_dataset_shape(name: str, shape: tuple[int, int, int]) -> None:
    c, h, w = shape
    model = create_model(name, num_classes=7, in_channels=c, input_size=(h, w))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, c, h, w))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_builtin_trains_one_step() -> None:
    # train mode (BatchNorm batch statistics, dropout) and backward work, not only inference
    model = create_model("wrn_16_2", num_classes=10, in_channels=1, input_size=(28, 28), dropout=0.3)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# Parameter counts in the CRD / RepDistiller and DKD tables (CIFAR-100, i.e. 100 classes).
@pytest.mark.parametrize(("name", "expected"), [
    ("cifar_resnet20", 0.28e6),
    ("cifar_resnet56", 0.86e6),
    ("cifar_resnet110", 1.74e6),
    ("cifar_resnet8x4", 1.23e6),
    ("cifar_resnet32x4", 7.43e6),
    ("wrn_16_2", 0.70e6),
    ("wrn_40_2", 2.25e6),
])
def test_param_counts_match_the_literature(name: str, expected: float) -> None:
    n = count_params(create_model(name, num_classes=100, in_channels=3))
    assert abs(n - expected) / expected < 0.05, n


def test_mlp_param_count_is_hintons_mnist_student() -> None:
    # 784-800-800-10: the 1,276,810 parameters of the DESIGN example report
    model = create_model("mlp", num_classes=10, in_channels=1, input_size=(28, 28))
    assert count_params(model) == 1_276_810


def test_mlp_kwargs_shape_the_network() -> None:
    model = create_model("mlp", num_classes=3, in_channels=1, input_size=(8, 8), hidden=[16], dropout=0.5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 16), (16, 3)]
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    linear_only = create_model("mlp", num_classes=3, in_channels=1, input_size=(8, 8), hidden=[])
    assert count_params(linear_only) == 64 * 3 + 3


def test_mlp_input_dropout_and_max_norm_hintons_teacher() -> None:
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_channels=1, input_size=(8, 8), hidden=[32, 32],
                         input_dropout=0.2, max_norm=0.5)
    assert isinstance(model.input_drop, nn.Dropout) and model.input_drop.p == 0.2
    hidden = [m for m in model.body if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for m in [*hidden, model.fc]:
            m.weight.mul_(10)  # rows far outside the ball
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    a = model(x)
    assert torch.equal(a, model(x))  # evaluation: no dropout, and the weights are left alone
    assert all(m.weight.norm(dim=1).max() > 0.5 for m in hidden)
    model.train()
    model(x)  # a training forward projects first: each hidden unit's incoming weights have norm <= 0.5
    assert all(m.weight.norm(dim=1).max() <= 0.5 + 1e-6 for m in hidden)
    assert model.fc.weight.norm(dim=1).max() > 0.5  # the output layer is not constrained
    plain = create_model("mlp", num_classes=10, in_channels=1, input_size=(8, 8), hidden=[32, 32])
    assert set(plain.state_dict()) == set(model.state_dict())  # same checkpoint layout either way
    with pytest.raises(InvalidModelKwargsError, match="max_norm"):
        validate_model_kwargs("mlp", {"max_norm": 0}, num_classes=10, in_channels=1)


def test_mlp_built_for_another_size_says_so() -> None:
    model = create_model("mlp", num_classes=10, in_channels=1, input_size=(28, 28))
    with pytest.raises(ValueError, match="built for inputs of shape"):
        model(torch.randn(2, 1, 8, 8))


def test_lenet5_param_count_does_not_depend_on_input_size() -> None:
    counts = {count_params(create_model("lenet5", num_classes=10, in_channels=1, input_size=(s, s)))
              for s in (8, 28, 64)}
    assert counts == {61_706}  # the classic LeNet-5 with a 1-channel input and 10 classes


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet8x4", "wrn_16_2"])
def test_cifar_networks_expose_stage_names_for_feature_hooks(name: str) -> None:
    model = create_model(name, num_classes=10, in_channels=3)
    top = dict(model.named_children())
    for part in ("stem", "layer1", "layer2", "layer3", "pool", "fc"):
        assert part in top, part
    seen: dict[str, tuple[int, ...]] = {}
    for part in ("layer1", "layer2", "layer3"):
        model.get_submodule(part).register_forward_hook(
            lambda _m, _i, out, part=part: seen.__setitem__(part, tuple(out.shape)))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert [seen[p][-1] for p in ("layer1", "layer2", "layer3")] == [32, 16, 8]  # strides 1, 2, 2


@pytest.mark.parametrize("size", [8, 28])
def test_torchvision_resnet18_takes_one_channel_small_images(size: int) -> None:
    model = create_model("resnet18", num_classes=10, in_channels=1, input_size=(size, size))
    assert model.conv1.in_channels == 1
    assert (model.conv1.out_channels, model.conv1.kernel_size, model.conv1.stride) == (64, (7, 7), (2, 2))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_torchvision_entries_are_registered_without_building_models(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built at registration")

    monkeypatch.setattr(torchvision.models, "get_model", fail)
    registry = _ModelRegistry("architecture", register_torchvision)
    assert "resnet18" in registry and "vit_b_16" in registry
    names = registry.names()
    assert "fasterrcnn_resnet50_fpn" not in names  # detection, segmentation, video: not classifiers
    assert not any(n.startswith("quantized") for n in names)
    entry = registry.get("mobilenet_v3_small")
    assert entry.meta["family"] == "torchvision"
    assert entry.meta["params"] is TorchvisionParams


def test_importing_kdcore_models_stays_light() -> None:
    code = ("import sys, kdcore.models as m; assert 'cifar_resnet20' in m.MODELS; "
            "bad = [x for x in ('torchvision', 'fastapi', 'celery', 'redis') if x in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_replace_first_conv_keeps_hyper_parameters() -> None:
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2, bias=False)),
                          nn.Conv2d(8, 4, 1))
    replace_first_conv(model, 2)
    first = model[0][0]
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride, first.padding) == (
        2, 8, (5, 5), (2, 2), (2, 2))
    assert first.bias is None and model[1].in_channels == 8


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_model("resnet18x", num_classes=10, in_channels=3)
    msg = str(info.value)
    assert "unknown architecture 'resnet18x'" in msg
    assert "'resnet18'" in msg  # the did-you-mean hint
    assert "mlp" in msg and "cifar_resnet20" in msg and "lenet5" in msg  # builtins listed first
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownNameError):
        validate_model_kwargs("no_such_net", {})


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("mlp", {"hidden": [-1]}, r"hidden\.0: Input should be greater than 0"),
    ("mlp", {"hidden": [800], "depth": 3},
     r"unknown kwarg 'depth' \(accepted: hidden, dropout, input_dropout, max_norm\)"),
    ("mlp", {"dropout": 1.0}, "dropout"),
    ("mlp", {"num_classes": 100}, "kwarg num_classes=100 contradicts dataset's 10 classes"),
    ("cifar_resnet20", {"in_channels": 3}, "kwarg in_channels=3 contradicts dataset's 1 input channels"),
    ("cifar_resnet20", {"widths": [8, 8, 16, 32]}, "unknown kwarg 'widths'"),
    ("resnet18", {"num_classes": 1000}, "contradicts dataset's 10 classes"),
    ("resnet18", {"weights": "DEFAULT"}, "never downloaded"),
    ("resnet18", {"pretrained": True}, "never downloaded"),
    ("mlp", {"weights": "DEFAULT"}, "never downloaded"),
    ("resnet18", {"input_size": [28, 28]}, "comes from the dataset"),
])
def test_bad_kwargs_raise_value_error(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        validate_model_kwargs(name, kwargs, num_classes=10, in_channels=1)
    assert isinstance(info.value, InvalidModelKwargsError)
    assert info.value.errors and all({"loc", "msg"} <= set(e) for e in info.value.errors)
    if not {"num_classes", "in_channels", "input_size"} & set(kwargs):  # create_model's own arguments
        with pytest.raises(ValueError, match=match):
            create_model(name, num_classes=10, in_channels=1, **kwargs)


def test_all_kwarg_problems_are_reported_together() -> None:
    with pytest.raises(InvalidModelKwargsError) as info:
        validate_model_kwargs("mlp", {"hidden": [0, "x"], "dropout": -1, "num_classes": 3}, num_classes=10)
    locs = {tuple(e["loc"]) for e in info.value.errors}
    assert locs == {("hidden", 0), ("hidden", 1), ("dropout",), ("num_classes",)}


def test_torchvision_unknown_kwarg_fails_as_value_error_when_built() -> None:
    # torchvision's kwargs are free-form, so this is caught when the model is built
    assert validate_model_kwargs("resnet18", {"no_such_option": 1}) == {"no_such_option": 1}
    with pytest.raises(ValueError, match="no_such_option"):
        create_model("resnet18", num_classes=10, in_channels=3, no_such_option=1)


def test_torchvision_kwargs_pass_through() -> None:
    model = create_model("resnet18", num_classes=10, in_channels=3, zero_init_residual=True)
    assert torch.count_nonzero(model.layer1[0].bn2.weight) == 0


def test_validated_kwargs_are_normalized() -> None:
    mlp_defaults = {"hidden": [800, 800], "dropout": 0.0, "input_dropout": 0.0, "max_norm": None}
    assert validate_model_kwargs("mlp", {}) == mlp_defaults
    assert validate_model_kwargs("mlp", {"dropout": 0}) == mlp_defaults
    # a class count equal to the dataset's is redundant and dropped ...
    assert validate_model_kwargs("lenet5", {"num_classes": 10}, num_classes=10) == {}
    # ... and kept when there is no dataset value to compare with yet
    assert validate_model_kwargs("lenet5", {"num_classes": 10}) == {"num_classes": 10}
    assert validate_model_kwargs("resnet18", {"num_classes": 10, "in_channels": 1},
                                 num_classes=10, in_channels=1) == {}
    assert validate_model_kwargs("cifar_resnet20", None) == {}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_classes": 0, "in_channels": 3}, "num_classes must be a positive integer"),
    ({"num_classes": 10, "in_channels": 0}, "in_channels must be a positive integer"),
    ({"num_classes": 10, "in_channels": 3, "input_size": (32,)}, r"input_size must be \(H, W\)"),
])
def test_create_model_checks_dataset_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("lenet5", **kwargs)


def test_catalog_is_json_ready_and_complete() -> None:
    catalog = model_catalog()
    json.dumps(catalog)
    by_name = {e["name"]: e for e in catalog}
    for name in ("mlp", "lenet5", "cifar_resnet20", "resnet18"):
        assert set(by_name[name]) == {"name", "family", "description", "params"}
        assert by_name[name]["description"]
    assert by_name["mlp"]["family"] == "builtin"
    mlp_schema = by_name["mlp"]["params"]
    assert set(mlp_schema["properties"]) == {"hidden", "dropout", "input_dropout", "max_norm"}
    assert mlp_schema["additionalProperties"] is False
    assert mlp_schema["properties"]["hidden"]["default"] == [800, 800]
    assert by_name["cifar_resnet20"]["params"]["properties"] == {}
    assert by_name["resnet18"]["family"] == "torchvision"
    assert by_name["resnet18"]["params"]["additionalProperties"] is True
    assert "arxiv.org" in by_name["resnet18"]["description"]
    assert [e["name"] for e in catalog] == sorted(by_name)
    # callers may edit what they get without changing the next answer
    by_name["resnet18"]["params"]["injected"] = True
    assert "injected" not in {e["name"]: e for e in model_catalog()}["resnet18"]["params"]


def test_register_model_with_params() -> None:
    class TinyParams(BaseModel):
        model_config = ConfigDict(extra="forbid")
        width: int = Field(default=4, gt=0)

    @register_model("_test_tiny", params=TinyParams, family="test")
    def tiny(*, num_classes: int, in_channels: int, input_size: tuple[int, int], width: int) -> nn.Module:
        """A test-only network."""
        h, w = input_size
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, width),
                             nn.Linear(width, num_classes))

    try:
        assert tiny.__name__ == "tiny"  # the decorator hands back the function itself
        entry = MODELS.get("_test_tiny")
        assert entry.meta["description"] == "A test-only network."
        model = create_model("_test_tiny", num_classes=2, in_channels=1, input_size=(8, 8), width=5)
        assert count_params(model) == 64 * 5 + 5 + 5 * 2 + 2
        with pytest.raises(ValueError, match="width"):
            create_model("_test_tiny", num_classes=2, in_channels=1, width=0)
        with pytest.raises(ValueError, match="registered twice"):
            register_model("_test_tiny")(tiny)
    finally:
        MODELS._entries.pop("_test_tiny", None)  # keep the shared registry as other tests expect it


def test_count_params_counts_parameters_not_buffers() -> None:
    assert count_params(nn.BatchNorm2d(8)) == 16  # weight and bias; running stats are buffers
    assert count_params(nn.Linear(3, 2)) == 8
