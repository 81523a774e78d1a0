"""Accuracy budgets (--max-accuracy-drop): which pruning steps the entwined loop keeps.

A step is judged after its own fine-tuning by its accuracy on training samples held out of fine-tuning and
calibration (`Data.holdout`), never on the evaluation set the report quotes. The drop is counted from the dense
model's accuracy as the report quotes it: the dense model was trained on the held-out samples, so its accuracy on them
reads high (the shipped resnet20: 95.85% on the 6,000 held out of Fashion-MNIST's training set against 94.21% on the
test set); a pruned model fine-tuned without them reads less high (0.6-1.4 points on the demo). The final fine-tuning
then wins back part of the last step's loss; RECOVERY points of it are allowed on top of the budget (see RECOVERY).
"""
from __future__ import annotations

from dataclasses import dataclass

# Points of a step's held-out drop that the final fine-tuning is allowed to win back. Measured on the demo
# (docs/research/accuracy-budget/index.md): the test accuracy after the final fine-tuning minus the held-out accuracy
# after the last kept step, over six runs, was +0.11 +- 0.55 points (from -0.54 to +0.96). The fine-tuning does win
# back 0.8-1.55 points on the test set, but a pruned model reads 0.6-1.4 points high on held-out images its dense
# parent was trained on, and the two cancel. So none is allowed; the spread is why the report checks the test drop.
RECOVERY = 0.0
MAX_STEPS = 4  # at most this many times --steps pruning steps in all


@dataclass
class AccuracyBudget:
    max_drop: float  # points below `reference` the pruned model may lose
    reference: float  # the dense model's accuracy (a fraction) the drop is counted from
    holdout: object  # the held-out batches a step is judged on
    floor: bool = True  # the target is a floor: its steps are taken whatever the accuracy
    margin: float = RECOVERY  # points of a step's drop the final fine-tuning is expected to win back

    def measure(self, model):
        from ..training.loops import evaluate

        return evaluate(model, self.holdout)

    def drop(self, accuracy):
        """Points below the reference."""
        return 100 * (self.reference - accuracy)

    def allows(self, accuracy):
        return self.drop(accuracy) <= self.max_drop + self.margin

    def describe(self):
        return {"max_drop_points": self.max_drop, "reference_accuracy": self.reference,
                "recovery_margin_points": self.margin, "floor": self.floor,
                "holdout_samples": _samples(self.holdout)}


def _samples(loader):
    dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        return len(dataset)
    labels = getattr(loader, "labels", None)
    return None if labels is None else len(labels)
