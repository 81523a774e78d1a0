"""The accuracy budget's step logic on scripted held-out accuracies: steps go on while within the budget, the first
step over it is rolled back and ends the loop, a floor's steps are taken whatever the accuracy."""
import torch

from singe_deploy.measure.flops import count
from singe_deploy.models.specs import build_model
from singe_deploy.pruning.budget import MAX_STEPS, RECOVERY, AccuracyBudget
from singe_deploy.pruning.entwined import Schedule, Target, prune
from singe_deploy.scoring.importance import make_criterion

SHAPE = (1, 1, 28, 28)


class Scripted(AccuracyBudget):
    """A budget whose held-out accuracies are a script, one per step."""

    def __init__(self, accuracies, **kw):
        super().__init__(holdout=None, **kw)
        self.script = list(accuracies)

    def measure(self, model):
        return self.script.pop(0)


def _run(budget, reduction=2.0, steps=2, states=None):
    model = build_model("builtin:resnet20", 10, 1).eval()
    dense = count(model, SHAPE).macs

    def on_step(step, m, records, phase, extra):
        if states is not None:
            states.append((step, phase, count(m, SHAPE).macs))

    result = prune(model, SHAPE, make_criterion("l2"), Target("macs", reduction),
                   Schedule(steps=steps, finetune_iters=0, epochs=0, round_to=1), budget=budget,
                   on_step=on_step, log=lambda *a: None)
    return dense, count(model, SHAPE).macs, result.steps, result


def test_steps_go_on_within_the_budget_and_one_over_it_is_rolled_back_then_half_a_step_is_tried():
    budget = Scripted([0.95, 0.94, 0.90, 0.945], max_drop=2.0, reference=0.955, floor=False)
    dense, final, steps, result = _run(budget)
    assert [s.get("rolled_back", False) for s in steps] == [False, False, True, False]
    assert [round(s["estimated_drop"], 6) for s in steps] == [0.5, 1.5, 5.5, 1.0]
    assert steps[2]["macs"] < steps[3]["macs"] < steps[1]["macs"] < steps[0]["macs"] < dense  # the half step's
    assert final == steps[3]["macs"] and "within the budget at half a step" in steps[3]["stop"]
    assert result.model(torch.zeros(1, *SHAPE[1:])).shape == (1, 10)  # the classifier, pruned never, after a rollback
    assert "stop" not in steps[2] and result.target_met  # no floor: nothing to miss


def test_a_half_step_over_the_budget_too_leaves_the_last_step_within_it():
    _, final, steps, _ = _run(Scripted([0.95, 0.90, 0.90], max_drop=1.0, reference=0.955, floor=False))
    assert [s.get("rolled_back", False) for s in steps] == [False, True, True]
    assert final == steps[0]["macs"] and "done" in steps[2]["stop"]


def test_a_first_step_over_the_budget_and_its_half_leave_the_dense_model():
    dense, final, steps, _ = _run(Scripted([0.80, 0.80], max_drop=1.0, reference=0.955, floor=False))
    assert len(steps) == 2 and all(s["rolled_back"] for s in steps) and final == dense


def test_the_floor_steps_are_taken_whatever_the_accuracy_then_the_budget_decides():
    budget = Scripted([0.50, 0.50, 0.50, 0.50], max_drop=1.0, reference=0.955, floor=True)
    dense, final, steps, result = _run(budget)
    assert [s.get("judged", False) for s in steps] == [False, False, True, True]
    assert steps[2]["rolled_back"] and steps[3]["rolled_back"] and final == steps[1]["macs"] <= dense / 2 * 1.03
    assert result.target_met  # the floor (2x) is met


def test_the_recovery_margin_widens_what_a_step_may_lose():
    # 1.2 points below dense: over a 1-point budget alone, within it plus a 0.5-point recovery margin
    within = Scripted([0.943, 0.80, 0.80], max_drop=1.0, reference=0.955, floor=False, margin=0.5)
    assert [s.get("rolled_back", False) for s in _run(within)[2]] == [False, True, True]
    over = Scripted([0.943, 0.80], max_drop=1.0, reference=0.955, floor=False, margin=0.0)
    assert _run(over)[2][0]["rolled_back"]


def test_the_loop_stops_within_the_budget_when_no_channel_is_left_to_remove():
    _, final, steps, _ = _run(Scripted([0.95] * 100, max_drop=5.0, reference=0.955, floor=False), reduction=16,
                              steps=1)  # steps of 16x: the second cannot reach 256x within --max-layer-ratio
    assert len(steps) == 2 and "no further step is possible" in steps[-1]["stop"]
    assert not any(s.get("rolled_back") for s in steps) and final == steps[-1]["macs"] < steps[0]["macs"]


def test_the_loop_takes_at_most_max_steps_times_steps():
    _, _, steps, _ = _run(Scripted([0.95] * 100, max_drop=5.0, reference=0.955, floor=False), reduction=1.1,
                          steps=1)
    assert len(steps) == MAX_STEPS and "the most a run takes" in steps[-1]["stop"]


def test_a_rolled_back_step_is_checkpointed_as_the_model_before_it():
    states = []
    _, final, steps, _ = _run(Scripted([0.95, 0.80, 0.80], max_drop=1.0, reference=0.955, floor=False), states=states)
    assert states[1] == (2, "prune", steps[0]["macs"])  # after the rollback: what a resume continues from
    assert states[-1] == (3, "prune", final) and final == steps[0]["macs"]


def test_no_recovery_is_allowed_by_default_as_measured():
    assert AccuracyBudget(1.0, 0.9, None).margin == RECOVERY == 0.0
