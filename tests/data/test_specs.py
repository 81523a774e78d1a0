import gzip

import numpy as np
import pytest
import torch

from singe_deploy.data.specs import find_fashion_mnist, make_data, read_idx
from singe_deploy.errors import UserError

from ..conftest import needs_fashion


def _write_idx(path, array, compress=True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)


def _fake_fashion(d, n=40):
    rng = np.random.default_rng(0)
    for images, labels in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                           ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
        _write_idx(d / f"{images}.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(d / f"{labels}.gz", rng.integers(0, 10, (n,)))


def test_idx_reader_round_trip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", a)
    _write_idx(tmp_path / "b", a, compress=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a) and np.array_equal(read_idx(tmp_path / "b"), a)


def test_idx_reader_rejects_garbage(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03")
    with pytest.raises(UserError, match="not a uint8 IDX"):
        read_idx(tmp_path / "bad")
    a = np.zeros((4, 4), dtype=np.uint8)
    _write_idx(tmp_path / "short", a, compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_from_data_dir_is_seeded_and_shaped(tmp_path):
    _fake_fashion(tmp_path)
    d = make_data("fashion-mnist", batch_size=8, data_dir=tmp_path, seed=3)
    assert d.real and d.num_classes == 10 and d.sample_shape == (1, 28, 28)
    x, y = next(iter(d.train))
    assert x.shape == (8, 1, 28, 28) and y.shape == (8,) and x.dtype == torch.float32
    again = make_data("fashion-mnist", batch_size=8, data_dir=tmp_path, seed=3)
    assert torch.equal(next(iter(again.train))[1], y)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(d.calibration(2), d.calibration(2)))
    rgb = make_data("fashion-mnist", batch_size=4, sample_shape=(3, 32, 32), data_dir=tmp_path)
    assert next(iter(rgb.val))[0].shape[1:] == (3, 32, 32)


def test_fashion_mnist_is_fine_tuned_unaugmented_unless_asked_and_samples_are_the_batches_unshuffled(tmp_path):
    _fake_fashion(tmp_path)
    plain = make_data("fashion-mnist", batch_size=8, data_dir=tmp_path)  # auto: off
    on = make_data("fashion-mnist", batch_size=8, data_dir=tmp_path, augment="on")
    assert not plain.train.augment and on.train.augment
    (xp, yp), (xa, ya) = next(iter(plain.train)), next(iter(on.train))
    assert torch.equal(yp, ya) and not torch.equal(xp, xa)  # the same order, only augmentation differs
    x, y = torch.cat([b[0] for b in plain.train.samples(16)]), torch.cat([b[1] for b in plain.train.samples(16)])
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0 * 1000003))[:8]
    assert torch.equal(x[order], xp) and torch.equal(y[order], yp)
    with pytest.raises(UserError, match="--augment"):
        make_data("fashion-mnist", data_dir=tmp_path, augment="yes")


def _all_samples(loader):
    return {bytes(x.numpy().tobytes()) for xb, _ in ((b[0], b[1]) for b in loader) for x in xb}


def test_a_holdout_is_set_apart_from_fine_tuning_and_calibration_and_is_the_same_for_every_seed(tmp_path):
    _fake_fashion(tmp_path)
    whole = make_data("fashion-mnist", batch_size=4, data_dir=tmp_path)
    d = make_data("fashion-mnist", batch_size=4, data_dir=tmp_path, holdout=0.25)
    assert whole.holdout is None and len(d.holdout.labels) == 10 and len(d.train.labels) == 30
    held, trained = _all_samples(d.holdout), _all_samples(d.train.samples())
    assert not held & trained and held | trained == _all_samples(whole.train.samples())
    assert not held & _all_samples(d.calibration(100))
    other_seed = make_data("fashion-mnist", batch_size=4, data_dir=tmp_path, holdout=0.25, seed=5)
    assert _all_samples(other_seed.holdout) == held
    with pytest.raises(UserError, match="--holdout"):
        make_data("fashion-mnist", data_dir=tmp_path, holdout=1.5)


def test_augmented_batches_have_plain_nchw_strides(tmp_path):
    """A one-channel batch permuted from NHWC passes is_contiguous() with channels-last strides, which sent
    pruned convs down a oneDNN backward that corrupted the heap on one thread (data.nchw)."""
    from singe_deploy.data.specs import nchw
    _fake_fashion(tmp_path)
    x, _ = next(iter(make_data("fashion-mnist", batch_size=8, data_dir=tmp_path, augment="on").train))
    assert x.stride() == (784, 784, 28, 1)
    odd = torch.randn(8, 28, 28, 1).permute(0, 3, 1, 2)
    assert odd.is_contiguous() and odd.stride() != (784, 784, 28, 1)
    assert nchw(odd).stride() == (784, 784, 28, 1) and torch.equal(nchw(odd), odd)
    plain = torch.randn(2, 3, 4, 4)
    assert nchw(plain) is plain


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        make_data("fashion-mnist", data_dir=tmp_path)


def test_synthetic_and_unknown_specs():
    d = make_data("synthetic", batch_size=4, sample_shape=(3, 16, 16), num_classes=7)
    assert not d.real and d.num_classes == 7
    x, y = d.calibration(1)[0]
    assert x.shape == (4, 3, 16, 16) and int(y.max()) < 7
    with pytest.raises(UserError, match="unknown data spec"):
        make_data("cifar10")


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((20, 24, 3), i * 40, dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    d = make_data(f"imagefolder:{tmp_path}", batch_size=2, sample_shape=(3, 16, 16), workers=0)
    assert d.num_classes == 2 and d.real
    x, y = next(iter(d.val))
    assert x.shape == (2, 3, 16, 16)
    with pytest.raises(UserError, match="train/<class>"):
        make_data(f"imagefolder:{tmp_path / 'nope'}")
    held = make_data(f"imagefolder:{tmp_path}", batch_size=2, sample_shape=(3, 16, 16), workers=0, holdout=0.34)
    assert len(held.holdout.dataset) == 2 and len(held.train.dataset) == 4
    assert not set(held.holdout.dataset.indices) & set(held.train.dataset.indices)


@needs_fashion
def test_real_fashion_mnist_sizes():
    d = make_data("fashion-mnist")
    assert len(d.train.labels) == 60000 and len(d.val.labels) == 10000
    assert find_fashion_mnist()[0].is_dir()


def _folder(root, classes=("cat", "dog"), n=3):
    from PIL import Image

    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.full((20, 24, 3), i * 40, dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def test_an_empty_class_folder_and_an_unreadable_image_are_named(tmp_path):
    _folder(tmp_path)
    (tmp_path / "train" / "bird").mkdir()
    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(UserError, match=r"class folder .*train/bird holds no image"):
        make_data(f"imagefolder:{tmp_path}", workers=0)
    for split in ("train", "val"):
        (tmp_path / split / "bird").rmdir()
    (tmp_path / "val" / "dog" / "9.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"image .*val/dog/9.png cannot be read"):
        make_data(f"imagefolder:{tmp_path}", workers=0)


def test_an_image_that_breaks_while_loading_is_skipped_and_counted(tmp_path, monkeypatch):
    from singe_deploy.data import specs as D

    _folder(tmp_path)
    bad = tmp_path / "train" / "cat" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # a readable header, truncated pixels
    monkeypatch.setattr(D, "_check_images", lambda *sets: None)  # as for a set too large to check up front
    d = make_data(f"imagefolder:{tmp_path}", batch_size=6, sample_shape=(3, 16, 16), workers=0)
    x, y = next(iter(d.calib))
    assert len(y) == 5 and d.skipped.summary() == {"count": 1, "first": str(bad)}


def test_imagefolder_calibration_batches_do_not_depend_on_what_ran_before(tmp_path):
    _folder(tmp_path, n=4)
    d = make_data(f"imagefolder:{tmp_path}", batch_size=4, sample_shape=(3, 16, 16), workers=0)
    first = d.calibration(2)
    for _ in d.train:  # training moves the training loader's shuffle on; calibration stays put
        pass
    again = d.calibration(2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))


def test_a_stream_restored_mid_pass_gives_the_batches_the_uninterrupted_one_gives(tmp_path):
    from singe_deploy.data.specs import Stream

    _fake_fashion(tmp_path)
    for spec in ("fashion-mnist", f"imagefolder:{tmp_path / 'img'}"):
        if spec.startswith("imagefolder"):
            _folder(tmp_path / "img", n=5)
        kw = dict(data_dir=tmp_path) if spec == "fashion-mnist" else dict(sample_shape=(3, 16, 16), workers=0)
        kw["augment"] = "on"  # its random numbers are part of the place restored
        whole = Stream(make_data(spec, batch_size=4, seed=3, **kw).train)
        for _ in range(5):
            next(whole)
        saved = whole.state()
        expected = [next(whole) for _ in range(12)]  # across the end of a pass
        fresh = Stream(make_data(spec, batch_size=4, seed=3, **kw).train).restore(saved)
        got = [next(fresh) for _ in range(12)]
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got)), spec


def test_a_training_set_smaller_than_a_batch_is_one_batch_not_a_hang(tmp_path):
    from singe_deploy.data.specs import Stream

    _fake_fashion(tmp_path, n=10)
    d = make_data("fashion-mnist", batch_size=128, data_dir=tmp_path)
    assert len(d.train) == 1 and len(next(Stream(d.train))[1]) == 10
    with pytest.raises(UserError, match="gives no batch"):
        next(Stream([]))
