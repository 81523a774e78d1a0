import io

import torch

from singe_deploy import progress as P

from .conftest import TinyNet


class Clock:
    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        return self.t

    def tick(self):
        self.t += self.step


def _run(n, step, total=True, postfix=None):
    clock, out = Clock(step), io.StringIO()
    bar = P.Lines(range(n) if total else iter(range(n)), desc="fine-tune", unit="it", file=out, now=clock)
    for i in bar:
        clock.tick()
        if postfix:
            bar.set_postfix(loss=f"{postfix:.3f}")
    return out.getvalue().splitlines()


def test_a_long_stage_writes_a_line_every_tenth_with_eta():
    lines = _run(100, 1.0, postfix=0.5)
    assert len(lines) == 10
    assert lines[0] == "fine-tune: 10/100 it (10%), loss=0.500, 0:10 elapsed, ETA 1:30"
    assert lines[-1].startswith("fine-tune: 100/100 it (100%)") and lines[-1].endswith("elapsed, done")


def test_a_slow_stage_writes_every_thirty_seconds_and_a_last_line():
    lines = _run(27, 7.0, total=False)  # no total: time alone decides
    assert [line.split(",")[0] for line in lines] == ["fine-tune: 5 it", "fine-tune: 10 it", "fine-tune: 15 it",
                                                       "fine-tune: 20 it", "fine-tune: 25 it", "fine-tune: 27 it"]
    assert lines[-1].endswith("done")


def test_a_quick_stage_writes_nothing():
    assert _run(1000, 0.001) == []


def test_plain_lines_when_stderr_is_not_a_terminal(capsys):
    bar = P.progress(range(3), desc="x")
    assert isinstance(bar, P.Lines)
    assert not isinstance(P.progress(range(3), desc="x", disable=True), P.Lines)
    list(bar)
    assert capsys.readouterr() == ("", "")  # three quick items: no line


def test_training_reports_its_loss_in_a_log(capsys, monkeypatch):
    from singe_deploy.train import train_iters

    monkeypatch.setattr(P, "MIN_SECONDS", 0.0)
    monkeypatch.setattr(P, "EVERY_FRACTION", 0.5)
    torch.manual_seed(0)
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,))) for _ in range(2)]
    train_iters(TinyNet(), loader, 4, 0.01, desc="fine-tune step 1")
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err == "" and len(lines) == 2 and lines[0].startswith("fine-tune step 1: 2/4 it (50%), loss=")
    assert "ETA" in lines[0] and "4/4 it (100%)" in lines[1] and lines[1].endswith("done")
