"""Results kept across runs (memo.py): the dense accuracy and teacher logits are computed once per weights, data and
machine, and computed again when any of them changes."""
import torch

from singe_deploy.data.specs import TensorLoader
from singe_deploy.training import memo

from ..conftest import TinyNet


def _loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorLoader(torch.randint(0, 256, (16, 12, 12), dtype=torch.uint8, generator=g),
                        torch.randint(0, 4, (16,), generator=g), 8, (1, 12, 12), (0.5,), (0.25,))


def test_the_accuracy_is_evaluated_once_per_weights_and_data(tmp_path, monkeypatch):
    monkeypatch.setattr(memo, "CACHE", tmp_path)
    calls = []

    def evaluate(model, loader):
        calls.append(1)
        return 0.25 * len(calls)

    model = TinyNet()
    first, _ = memo.accuracy(model, _loader(), evaluate)
    again, how2 = memo.accuracy(model, _loader(), evaluate)
    assert (first, again, len(calls)) == (0.25, 0.25, 1) and how2.startswith("measured before")
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert memo.accuracy(model, _loader(), evaluate)[0] == 0.5  # new weights: evaluated again
    assert memo.accuracy(model, _loader(seed=1), evaluate)[0] == 0.75  # new data too
    assert memo.accuracy(model, [(torch.zeros(1), torch.zeros(1))], evaluate) == (1.0, "computed")  # not in memory


def test_a_tensor_is_computed_once_and_a_corrupt_cache_file_is_computed_again(tmp_path, monkeypatch):
    monkeypatch.setattr(memo, "CACHE", tmp_path)
    calls = []
    key = memo.key(TinyNet(), _loader(), what="logits")
    value, how = memo.tensor(key, lambda: calls.append(1) or torch.arange(3.0))
    again, how2 = memo.tensor(key, lambda: calls.append(1) or torch.zeros(3))
    assert torch.equal(value, again) and len(calls) == 1 and how == "computed" and how2.startswith("computed before")
    (file,) = (tmp_path / "logits").iterdir()
    file.write_bytes(b"not a checkpoint")
    assert torch.equal(memo.tensor(key, lambda: torch.ones(3))[0], torch.ones(3))
