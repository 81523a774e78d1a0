import pytest
import torch

from singe_deploy.config import defaults
from singe_deploy.errors import UserError
from singe_deploy.source import BASELINES, Source, check_forward


def test_from_config_takes_the_load_options_and_nothing_else():
    cfg = dict(defaults(), model="builtin:resnet56", seed=3, lr=0.5)
    src = Source.from_config(cfg)
    assert src.model == "builtin:resnet56" and src.seed == 3 and not hasattr(src, "lr")


@pytest.mark.parametrize("model,data,shape,want", [
    ("builtin:resnet20", "fashion-mnist", None, (1, 28, 28)),  # builtin models on Fashion-MNIST take its images
    ("builtin:resnet20", "synthetic", [1, 3, 40, 40], (3, 40, 40)),  # --input-shape wins
    ("torchvision:resnet18", "fashion-mnist", None, (3, 224, 224)),  # a zoo model keeps its own input
])
def test_sample_shape(model, data, shape, want):
    assert Source(model=model, data=data, input_shape=shape).sample_shape() == want


def test_checkpoint_path_auto_names_the_shipped_baseline_only_for_its_model_and_data(tmp_path):
    assert Source(model="builtin:resnet56").checkpoint_path().name == BASELINES[("builtin:resnet56", "fashion-mnist")]
    assert Source(model="builtin:resnet56", pretrained=True).checkpoint_path() is None
    assert Source(model="builtin:resnet56", data="synthetic").checkpoint_path() is None
    assert Source(checkpoint="None").checkpoint_path() is None
    assert Source(checkpoint=str(tmp_path / "w.pt")).checkpoint_path() == tmp_path / "w.pt"
    with pytest.raises(UserError, match="ships no asset 'nope.pt'"):
        Source(checkpoint="asset:nope.pt").checkpoint_path()


def test_load_fits_random_labels_to_the_model_head():
    model, data, shape, checkpoint = Source(model="builtin:resnet20", data="synthetic", input_shape=[1, 3, 32, 32],
                                            num_classes=7, batch_size=4).load(log=lambda *a: None)
    x, y = next(iter(data.train))
    assert shape == (3, 32, 32) and checkpoint is None and not data.real
    assert model(x).shape == (4, 7) and data.num_classes == 7 and int(y.max()) < 7


def test_check_forward_names_the_shape_or_the_class_count_that_does_not_fit():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    assert check_forward(model, "m", (3, 2, 2), None) == 5
    with pytest.raises(UserError, match="fails on input shape 1,3,4,4.*--input-shape"):
        check_forward(model, "m", (3, 4, 4), None)
    with pytest.raises(UserError, match="has 5 outputs but the data has 10 classes"):
        check_forward(model, "m", (3, 2, 2), 10)


def _images(root, size, n=2, sizes=None):
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (sizes or [size])[i % len(sizes or [size])]
                Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / split / cls / f"{i}.png")
    return f"imagefolder:{root}"


@pytest.mark.parametrize("model,size,want,why", [
    ("builtin:resnet20", (20, 24), (3, 20, 24), "the images' size"),  # any size for a CIFAR-style model
    ("torchvision:resnet18", (32, 32), (3, 32, 32), "the images' size"),  # small images stay small: no 224
    ("torchvision:resnet18", (300, 400), (3, 224, 224), "cropped and resized"),  # photos: the model's own size
])
def test_an_image_folder_runs_at_its_images_size(tmp_path, model, size, want, why):
    shape, said = Source(model=model, data=_images(tmp_path, size)).shape_and_why()
    assert shape == want and why in said


def test_mixed_sizes_take_the_most_common_and_say_so(tmp_path):
    data = _images(tmp_path, None, n=3, sizes=[(16, 16), (16, 16), (20, 20)])
    shape, said = Source(model="builtin:resnet20", data=data).shape_and_why()
    assert shape == (3, 16, 16) and "most common size; images of 2 sizes are resized to it" in said


def test_a_model_that_takes_only_its_own_size_gets_it_and_the_resize_is_said(tmp_path):
    lines = []
    data = _images(tmp_path, (32, 32))
    _, _, shape, _ = Source(model="tests/conftest.py:fixed224_factory", data=data, batch_size=2).load(lines.append)
    assert shape == (3, 224, 224)
    assert [x for x in lines if x.startswith("input ")] == [
        "input 1,3,224,224 (tests/conftest.py:fixed224_factory's own size: it does not take the images' 32x32, so "
        "they are resized to it (--input-shape to choose))"]


def test_the_input_is_said_once_at_load():
    lines = []
    Source(model="builtin:resnet20", data="synthetic", input_shape=[1, 3, 32, 32], batch_size=2).load(lines.append)
    assert "input 1,3,32,32 (--input-shape)" in lines
