"""The dense model's logits computed once for unaugmented in-memory data (distill.py): what the batches carry, and
that fine-tuning from them trains as the live teacher does."""
import copy

import torch

from singe_deploy.data.specs import TensorLoader
from singe_deploy.training import distill
from singe_deploy.training.loops import Recipe, train_iters

from ..conftest import TinyNet


def _loader(augment=False, n=40):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 12, 12), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    return TensorLoader(images, labels, 8, (1, 12, 12), (0.5,), (0.25,), shuffle=True, augment=augment, seed=1,
                        drop_last=True)


def _recipe(teacher):
    return Recipe(teacher=teacher, distill_alpha=0.7, amp="off", channels_last="off")


def test_each_batch_carries_the_teachers_logits_of_its_own_samples():
    torch.manual_seed(0)
    teacher = TinyNet().eval()
    loader = distill.with_logits(_loader(), _recipe(teacher), log=lambda *a: None)
    assert loader is not None and loader.soft.shape == (40, 4)
    for x, y, soft in loader:
        with torch.no_grad():
            assert torch.allclose(soft, teacher(x), atol=1e-5)


def test_augmented_or_file_data_keeps_the_live_teacher():
    teacher = TinyNet().eval()
    assert distill.with_logits(_loader(augment=True), _recipe(teacher)) is None
    assert distill.with_logits([(torch.randn(2, 1, 12, 12), torch.zeros(2, dtype=torch.long))],
                               _recipe(teacher)) is None


def test_logits_over_the_memory_limit_are_not_held(monkeypatch):
    monkeypatch.setattr(distill, "MAX_BYTES", 40 * 4 * 4 - 1)
    assert distill.with_logits(_loader(), _recipe(TinyNet().eval())) is None


def test_fine_tuning_from_the_held_logits_ends_where_the_live_teacher_does():
    torch.manual_seed(0)
    teacher, student = TinyNet().eval(), TinyNet()
    results = []
    for cached in (False, True):
        model = copy.deepcopy(student)
        recipe = _recipe(teacher)
        loader = distill.with_logits(_loader(), recipe, log=lambda *a: None) if cached else _loader()
        calls = []
        hook = teacher.register_forward_hook(lambda *a, seen=calls: seen.append(1))
        train_iters(model, loader, 8, 0.05, recipe=recipe)
        hook.remove()
        assert bool(calls) != cached  # the held logits replace the teacher's forward passes
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-4)
    assert not torch.allclose(results[0], torch.cat([p.detach().flatten() for p in student.parameters()]), atol=1e-3)
