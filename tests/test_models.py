"""Tests for benchmark.models (zoo, safe checkpoint loading) and benchmark.train helpers."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data import MEAN, STD
from benchmark.models import (
    MODELS,
    ResNet,
    check_model_name,
    checkpoint_path,
    load_model,
    load_state,
)
from benchmark.quantizers import quantizable_layers
from benchmark.train import augment, evaluate

PAD = 2


class PickleBomb:
    """Unpickling this object touches a file: a loader that runs it is unsafe."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


# ---------------------------------------------------------------- the zoo


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_zoo_models_registered(name):
    assert name in MODELS
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zoo_model_output_shape(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def test_resnet20_quantizable_layers():
    model = MODELS["resnet20"]()
    layers = quantizable_layers(model)
    kinds = [type(m) for _, m in layers]
    assert len(layers) == 20
    assert kinds.count(nn.Conv2d) == 19 and kinds[-1] is nn.Linear
    # The option-A shortcut has no parameters: no 1x1 projection convs.
    assert all(m.kernel_size == (3, 3) for _, m in layers[:-1])


def test_resnet_depth_must_be_6n_plus_2():
    assert len(quantizable_layers(ResNet(32))) == 32
    with pytest.raises(ValueError, match="21"):
        ResNet(21)


def test_mobilenetv2_has_depthwise_convs_and_relu6():
    model = MODELS["mobilenetv2"]()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1 and m.groups == m.in_channels == m.out_channels]
    assert len(depthwise) >= 5
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_unknown_model_name():
    with pytest.raises(ValueError, match="'vgg16'") as info:
        check_model_name("vgg16")
    assert "resnet20" in str(info.value) and "mobilenetv2" in str(info.value)
    with pytest.raises(ValueError, match="'vgg16'"):
        load_model("vgg16")
    with pytest.raises(ValueError, match="'vgg16'"):
        checkpoint_path("vgg16")


def test_checkpoint_path_is_shipped_location():
    path = checkpoint_path("resnet20")
    assert path.name == "resnet20.pt"
    assert path.parent.name == "checkpoints" and path.parent.parent.name == "benchmark"


# ---------------------------------------------------------------- checkpoints


def test_load_state_round_trip(tmp_path):
    torch.manual_seed(1)
    src = MODELS["mobilenetv2"]()
    torch.save(src.state_dict(), tmp_path / "m.pt")
    dst = load_state(MODELS["mobilenetv2"](), tmp_path / "m.pt")
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_load_model_from_given_checkpoint_is_eval(tmp_path):
    torch.manual_seed(2)
    src = MODELS["resnet20"]()
    torch.save(src.state_dict(), tmp_path / "r.pt")
    model = load_model("resnet20", tmp_path / "r.pt")
    assert not model.training
    assert torch.equal(model.fc.weight, src.fc.weight)


def test_load_state_mismatched_checkpoint(tmp_path):
    path = tmp_path / "resnet20.pt"
    torch.save(MODELS["resnet20"]().state_dict(), path)
    target = MODELS["mobilenetv2"]()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit") as info:
        load_state(target, path)
    assert "\n" not in str(info.value)
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k])


def test_load_state_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state(MODELS["resnet20"](), tmp_path / "nope.pt")


def test_load_state_garbage_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="cannot be read"):
        load_state(MODELS["resnet20"](), path)


def test_load_state_not_a_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        load_state(MODELS["resnet20"](), path)


def test_load_state_refuses_arbitrary_pickles(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "bomb.pt"
    torch.save({"fc.weight": PickleBomb(marker)}, path)
    with pytest.raises(ValueError, match="cannot be read"):
        load_state(MODELS["resnet20"](), path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_shipped_checkpoint_is_trained(name, test_subset):
    model = load_model(name)
    x, y = test_subset[0][:1000], test_subset[1][:1000]
    acc, loss = evaluate(model, x, y)
    # A trained Fashion-MNIST classifier, far from chance (10 %).
    assert acc > 85.0
    assert loss < 0.5
    record = json.loads(checkpoint_path(name).with_suffix(".json").read_text())
    assert record["model"] == name
    assert record["config"]["seed"] == 0


# ---------------------------------------------------------------- train.evaluate


def test_evaluate_matches_manual_computation(resnet20_trained, test_subset):
    x, y = test_subset[0][:500], test_subset[1][:500]
    acc, loss = evaluate(resnet20_trained, x, y, batch=128)
    with torch.no_grad():
        logits = resnet20_trained(x)
    assert acc == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))
    assert loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


# ---------------------------------------------------------------- train.augment


def candidate_views(img: torch.Tensor) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every shifted crop of the zero-padded image, unflipped and flipped."""
    # A black pixel after normalization, computed in float32 like load_split does.
    background = float((torch.zeros(()) - MEAN) / STD)
    padded = F.pad(img, (PAD, PAD, PAD, PAD), value=background)
    out = []
    for dy in range(2 * PAD + 1):
        for dx in range(2 * PAD + 1):
            crop = padded[:, dy : dy + 28, dx : dx + 28]
            out += [(dy, dx, False, crop), (dy, dx, True, crop.flip(-1))]
    return out


@pytest.fixture(scope="module")
def images(test_subset) -> torch.Tensor:
    return test_subset[0][:64]


def test_augment_is_seeded(images):
    a = augment(images, torch.Generator().manual_seed(7))
    b = augment(images, torch.Generator().manual_seed(7))
    c = augment(images, torch.Generator().manual_seed(8))
    assert a.shape == images.shape and a.dtype == images.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_does_not_modify_input(images):
    before = images.clone()
    augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(images, before)


def test_augment_only_crops_and_flips(images):
    out = augment(images, torch.Generator().manual_seed(11))
    used = []
    for i, (img, aug) in enumerate(zip(images, out, strict=True)):
        views = candidate_views(img)
        matches = [(dy, dx, fl) for dy, dx, fl, view in views if torch.equal(view, aug)]
        assert matches, f"augmented image {i} is not a shifted/flipped crop of its input"
        used += matches
    # The augmentation really varies: both flip states and several shifts occur.
    assert {fl for _, _, fl in used} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in used}) > 5


NEW_FAMILIES = {
    "vgg": "plain CNN",
    "resnext": "grouped convolutions",
    "shufflenetv2": "channel split and shuffle",
    "efficientnet": "squeeze-excite, SiLU, 5x5 depthwise",
    "densenet": "concatenation",
    "vit": "attention, LayerNorm, GELU, no BatchNorm",
}


@pytest.mark.parametrize("name", sorted(NEW_FAMILIES))
def test_new_zoo_families_fold_and_quantize(name):
    """Every zoo model folds its BatchNorms (if any) exactly and has quantizable layers."""
    from benchmark.ptq import fold_bn
    from benchmark.quantizers import quantizable_layers

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randn(4, 1, 28, 28)
    folded = fold_bn(model, x)  # a fold that changed the function would be undone
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert len(quantizable_layers(folded)) >= 8


def test_new_zoo_families_have_their_defining_parts():
    from torch import nn

    kinds = {n: {type(m) for m in MODELS[n]().modules()} for n in NEW_FAMILIES}
    convs = {n: [m for m in MODELS[n]().modules() if isinstance(m, nn.Conv2d)] for n in kinds}
    assert any(c.groups == 8 for c in convs["resnext"])
    assert any(c.groups == c.in_channels > 1 for c in convs["shufflenetv2"])
    assert any(c.kernel_size == (5, 5) and c.groups > 1 for c in convs["efficientnet"])
    assert nn.SiLU in kinds["efficientnet"]
    assert nn.LayerNorm in kinds["vit"] and nn.GELU in kinds["vit"]
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds["vit"])
    assert sum(isinstance(m, nn.Linear) for m in MODELS["vit"]().modules()) >= 16
    assert not any(k.__name__.startswith("Res") for k in kinds["vgg"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_training_records(name):
    """Every shipped checkpoint has its seeded training record, FP top-1 >= 90 %."""
    from benchmark.models import checkpoint_path

    path = checkpoint_path(name)
    if not path.is_file():  # a model still in training has neither file
        assert not path.with_suffix(".json").is_file()
        return
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["model"] == name and record["config"]["seed"] == 0
    assert record["test_top1"] >= 90.0


def test_training_recipes():
    from benchmark.train import TrainConfig

    assert TrainConfig.for_model("vit").optimizer == "adamw"
    # The ViT trains on the images as they are; every CNN on random crops and flips.
    assert not TrainConfig.for_model("vit").augment and TrainConfig.for_model("vgg").augment
    assert TrainConfig.for_model("vit", augment=True).augment
    assert TrainConfig.for_model("vit", augment=None) == TrainConfig.for_model("vit")
    assert TrainConfig.for_model("resnet20") == TrainConfig()
    assert TrainConfig.for_model("vgg", epochs=3, seed=None).epochs == 3
    with pytest.raises(ValueError, match="optimizer 'adam' unknown"):
        TrainConfig(optimizer="adam")


def test_train_command_reads_augment_as_an_override():
    from emq.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["train", "--model", "vit"]).augment is None  # the recipe decides
    assert parse(["train", "--model", "vit", "--augment"]).augment is True
    assert parse(["train", "--model", "vgg", "--no-augment"]).augment is False
