import pytest
import torch
from torch import nn

from singe_deploy.errors import UserError
from singe_deploy.models.specs import (
    build_model,
    default_input_shape,
    load_model,
    load_pruned,
    parse_spec,
    save_pruned,
)
from singe_deploy.pruning.entwined import Schedule, Target, prune
from singe_deploy.scoring.importance import make_criterion

from ..conftest import needs_fashion

TINY = "tests/conftest.py:tiny_factory"


def test_parse_specs():
    assert parse_spec("builtin:resnet20") == ("builtin", None, "resnet20")
    assert parse_spec("torchvision:resnet50") == ("torchvision", None, "resnet50")
    assert parse_spec("path/to/net.py:make") == ("file", "path/to/net.py", "make")
    with pytest.raises(UserError, match="unknown model kind"):
        parse_spec("keras:resnet")
    with pytest.raises(UserError, match="no kind"):
        parse_spec("resnet20")


@pytest.mark.parametrize("name,depth", [("resnet20", 20), ("resnet56", 56)])
def test_builtin_resnets(name, depth):
    m = build_model(f"builtin:{name}", num_classes=7, in_channels=1)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d) and x.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convs + the classifier
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_torchvision_and_file_specs():
    m = build_model("torchvision:resnet18", num_classes=5)
    assert m.fc.out_features == 5
    assert default_input_shape("torchvision:inception_v3") == (3, 299, 299)
    t = build_model(TINY, num_classes=3, in_channels=1)
    assert t.head.out_features == 3


@pytest.mark.parametrize("spec,match", [
    ("builtin:resnet21", "unknown builtin"),
    ("torchvision:resnet51", "unknown torchvision model 'resnet51'.*resnet50"),
    ("tests/nothere.py:make", "does not exist"),
    ("tests/conftest.py:nothing", "no callable"),
])
def test_unknown_specs(spec, match):
    with pytest.raises(UserError, match=match):
        build_model(spec)


def test_timm_missing_or_unknown():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install timm"):
            build_model("timm:resnet18")
    else:
        with pytest.raises(UserError, match="unknown timm model"):
            build_model("timm:not_a_model_xyz")


def test_checkpoint_round_trip_and_wrapped_dicts(tmp_path):
    m = build_model("builtin:resnet20", 10, 1)
    torch.save(m.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": m.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    for f in ("plain.pt", "wrapped.pt"):
        loaded = load_model("builtin:resnet20", tmp_path / f, 10, 1)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), m.state_dict().values()))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model("builtin:resnet20", tmp_path / "missing.pt", 10, 1)
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="corrupt"):
        load_model("builtin:resnet20", tmp_path / "corrupt.pt", 10, 1)
    torch.save(build_model("builtin:resnet56", 10, 1).state_dict(), tmp_path / "r56.pt")
    with pytest.raises(UserError, match="does not fit builtin:resnet20"):
        load_model("builtin:resnet20", tmp_path / "r56.pt", 10, 1)
    torch.save(build_model("builtin:resnet20", 10, 1), tmp_path / "pickled.pt")
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_model("builtin:resnet20", tmp_path / "pickled.pt", 10, 1)
    assert isinstance(load_model("builtin:resnet20", tmp_path / "pickled.pt", 10, 1, trust=True), nn.Module)


@pytest.mark.parametrize("spec,shape,classes", [
    ("builtin:resnet20", (1, 1, 28, 28), 10),
    ("torchvision:mobilenet_v2", (1, 3, 64, 64), 10),
])
def test_pruned_model_reloads_without_pickled_code(tmp_path, spec, shape, classes):
    m = build_model(spec, classes, shape[1]).eval()
    prune(m, shape, make_criterion("l1"), Target("macs", 2.0), Schedule(steps=1, finetune_iters=0, round_to=8),
          log=lambda *a: None)
    save_pruned(m, tmp_path / "p.pt", spec, classes, shape[1], shape)
    back = load_pruned(tmp_path / "p.pt").eval()
    x = torch.randn(shape)
    assert torch.equal(back(x), m(x))
    assert torch.load(tmp_path / "p.pt", weights_only=True)["spec"] == spec
    again = load_model(spec, tmp_path / "p.pt")
    assert torch.equal(again.eval()(x), m(x))
    with pytest.raises(UserError, match="not builtin:resnet56|is a pruned"):
        load_model("builtin:resnet56" if spec.startswith("builtin") else "torchvision:resnet18", tmp_path / "p.pt")


@needs_fashion
@pytest.mark.parametrize("spec,least", [("builtin:resnet20", 0.93), ("builtin:resnet56", 0.90)])
def test_shipped_baselines_load_for_their_model_and_data_and_are_trained(spec, least):
    from singe_deploy.config import defaults
    from singe_deploy.data.specs import make_data
    from singe_deploy.source import BASELINES, Source
    from singe_deploy.training.loops import evaluate

    cfg = dict(defaults(), model=spec)
    path = Source.from_config(cfg).checkpoint_path()
    assert path is not None and path.name == BASELINES[(spec, "fashion-mnist")]
    assert Source.from_config(dict(cfg, data="synthetic")).checkpoint_path() is None  # no baseline for other data
    model = load_model(spec, path, 10, 1)
    data = make_data("fashion-mnist", 256, (1, 28, 28), val_limit=1024)
    assert evaluate(model, data.val) >= least  # the README quotes the full test set: 94.21% and 91.61%
