"""Fine-tuning: the loss under a Recipe (label smoothing, distillation from the dense model) and the teacher's
place in it."""
import copy

import pytest
import torch
import torch.nn.functional as F

from singe_deploy.training.loops import Recipe, recipe_loss, train_iters

from ..conftest import TinyNet, batches

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_the_distillation_loss_is_the_hand_computed_one():
    torch.manual_seed(0)
    s, t, y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 2, 1])
    recipe = Recipe(distill_t=2.0, distill_alpha=0.3)
    p_t, log_p_s = torch.softmax(t / 2, 1), torch.log_softmax(s / 2, 1)
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum()
    ce = -torch.log_softmax(s, 1)[torch.arange(3), y].sum()
    assert torch.allclose(recipe_loss(s, y, recipe, t), 0.3 * 4 * kl + 0.7 * ce, atol=1e-5)
    assert torch.allclose(recipe_loss(s, y, recipe), ce)  # no teacher: cross-entropy alone
    smooth = Recipe(label_smoothing=0.1)
    assert torch.allclose(recipe_loss(s, y, smooth), F.cross_entropy(s, y, reduction="sum", label_smoothing=0.1))


def test_the_teacher_gets_no_gradient_and_is_not_trained():
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet()
    before = copy.deepcopy(teacher.state_dict())
    seen = []
    teacher.register_forward_hook(lambda m, a, o: seen.append((m.training, torch.is_grad_enabled())))
    data = iter(batches(n=3))
    train_iters(student, None, 3, 0.05, batches=data, recipe=Recipe(teacher=teacher, distill_alpha=0.9))
    assert seen == [(False, False)] * 3  # once per batch, in eval mode, without autograd
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_the_default_recipe_trains_as_before_and_distillation_changes_the_result():
    def trained(recipe):
        torch.manual_seed(0)
        model = TinyNet()
        torch.manual_seed(1)
        train_iters(model, None, 3, 0.05, batches=iter(batches(n=3)), recipe=recipe)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain = trained(None)
    assert torch.equal(plain, trained(Recipe()))  # options off: the same weights as without a recipe
    torch.manual_seed(2)
    assert not torch.equal(plain, trained(Recipe(teacher=TinyNet(), distill_alpha=0.9)))


def test_prune_distils_from_a_copy_of_the_dense_model_when_asked(monkeypatch):
    import singe_deploy.pruning.entwined as P
    from singe_deploy.data.specs import Data
    from singe_deploy.scoring.importance import make_criterion

    recipes = []
    real = P.train_iters
    monkeypatch.setattr(P, "train_iters", lambda *a, **k: recipes.append(k["recipe"]) or real(*a, **k))
    data = Data("test", batches(n=2), batches(n=1, seed=1), 4, (1, 12, 12), True)
    for distill in (False, True):
        torch.manual_seed(0)
        model = TinyNet()
        dense = copy.deepcopy(model.state_dict())
        P.prune(model, (1, 1, 12, 12), make_criterion("l2"), P.Target("macs", 1.5),
                P.Schedule(steps=1, finetune_iters=2, epochs=0, round_to=1, distill=distill, distill_t=3.0,
                           label_smoothing=0.1), data, log=lambda *a: None)
        recipe = recipes[-1]
        assert recipe.label_smoothing == 0.1 and recipe.distill_t == 3.0
        if distill:  # the teacher is the model as it was before pruning
            assert recipe.teacher is not model and all(torch.equal(dense[k], v)
                                                       for k, v in recipe.teacher.state_dict().items())
        else:
            assert recipe.teacher is None


def test_precision_resolves_auto_per_device_and_refuses_fp16_on_a_cpu(monkeypatch):
    from singe_deploy.errors import UserError
    from singe_deploy.training.loops import precision

    assert precision("auto", "auto", "cpu") == (None, False)  # fp32, contiguous: measured faster on CPUs
    assert precision("bf16", "on", "cpu") == (torch.bfloat16, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision("auto", "auto", "cuda") == (torch.bfloat16, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision("auto", "off", "cuda") == (torch.float16, False)  # no bf16 on this GPU: fp16 with a scaler
    assert precision("off", "auto", "cuda") == (None, True)
    with pytest.raises(UserError, match="--amp fp16 needs a CUDA device"):
        precision("fp16", "auto", "cpu")
    with pytest.raises(UserError, match="--amp must be one of"):
        precision("int8", "auto", "cpu")


def _train_seen(recipe, device="cpu"):
    """Weights after 3 iterations under `recipe`, and (conv input dtype, channels-last?, conv output dtype) seen."""
    torch.manual_seed(0)
    model = TinyNet()
    seen = []
    model.grouped.register_forward_hook(lambda m, a, o: seen.append(
        (a[0].dtype, a[0].is_contiguous(memory_format=torch.channels_last), o.dtype)))
    from singe_deploy.training import distributed
    old = distributed._current
    distributed._current = distributed.Context(device=torch.device(device))
    try:
        train_iters(model, None, 3, 0.05, batches=iter(batches(n=3)), recipe=recipe)
    finally:
        distributed._current = old
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" and p.is_contiguous() for p in model.parameters())
    return torch.cat([p.detach().flatten() for p in model.parameters()]), seen


def test_options_off_train_as_before_and_bf16_and_channels_last_take_effect():
    plain, seen = _train_seen(Recipe())
    off, _ = _train_seen(Recipe(amp="off", channels_last="off"))
    assert torch.equal(plain, off) and seen[0] == (torch.float32, False, torch.float32)
    bf16, seen = _train_seen(Recipe(amp="bf16"))
    assert seen[0][2] == torch.bfloat16  # the forward ran in bf16, the weights stayed fp32
    assert not torch.equal(bf16, plain) and torch.allclose(bf16, plain, atol=0.05)
    cl, seen = _train_seen(Recipe(channels_last="on"))
    assert seen[0][1] and torch.allclose(cl, plain, atol=1e-4)  # the same function, another memory layout


@pytest.mark.gpu
@needs_gpu
def test_amp_and_channels_last_on_cuda():
    plain, _ = _train_seen(Recipe(amp="off", channels_last="off"), "cuda")
    for amp in ("auto", "bf16", "fp16"):
        weights, seen = _train_seen(Recipe(amp=amp), "cuda")
        assert seen[0][2] in (torch.bfloat16, torch.float16) and seen[0][1]  # autocast and channels-last
        assert torch.isfinite(weights).all() and torch.allclose(weights, plain, atol=0.05)


def test_a_diverging_loss_stops_training_and_the_last_saved_state_is_a_good_one():
    from singe_deploy.training.loops import Diverged

    model, saved = TinyNet(), []
    diverged = r"fine-tune diverged: the loss is (nan|inf) at iteration \d+ of 50 .*lower --lr"
    with pytest.raises(Diverged, match=diverged):
        train_iters(model, batches(8), 50, lr=1e9, save=saved.append, save_every=0)
    assert saved, "diverged before any state was saved"
    last = saved[-1]
    good = TinyNet()
    good.load_state_dict(last["weights"])
    x, y = batches(1)[0]
    assert torch.isfinite(F.cross_entropy(good.train()(x), y))


def test_training_resumed_from_a_saved_state_ends_with_the_same_weights():
    from singe_deploy.data.specs import Stream

    data = batches(3)
    whole, states = TinyNet(), []
    torch.manual_seed(0)
    # the optimizer's state dict holds its live buffers: a copy of each state, as writing it to a file makes
    train_iters(whole, None, 8, lr=0.05, batches=Stream(data), save=lambda s: states.append(copy.deepcopy(s)),
                save_every=0)
    state = states[3]  # before iteration 4
    resumed = TinyNet()
    resumed.load_state_dict(state["weights"])
    train_iters(resumed, None, 8, lr=0.05, batches=Stream(data), resume=state)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
