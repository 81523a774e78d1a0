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
    lines = _run(100, 10.0, postfix=0.5)  # 1000 s: every 10% is after more than 30 s
    assert len(lines) == 10
    assert lines[0] == "fine-tune: 10/100 it (10%), loss=0.500, 1:40 elapsed, ETA 15:00"
    assert lines[-1] == "fine-tune: 100/100 it (100%), loss=0.500, 16:40 elapsed, done"


def test_a_quick_stage_waits_thirty_seconds_between_lines():
    lines = _run(100, 1.0)  # 100 s: 10% takes 10 s, so the 30 s gap decides
    assert [line.split(" it")[0] for line in lines] == ["fine-tune: 30/100", "fine-tune: 60/100", "fine-tune: 90/100",
                                                        "fine-tune: 100/100"]
    assert lines[-1].endswith("done")


def test_a_very_long_stage_writes_at_least_every_five_minutes():
    lines = _run(20, 100.0)  # 2000 s, 10% = 200 s: the 30 s gap and 10% meet every 2 items
    assert len(lines) == 10
    lines = _run(10000, 0.5)  # 5000 s, 10% = 500 s: then a line every 300 s
    assert len(lines) == 17 and lines[0] == "fine-tune: 600/10000 it (6%), 5:00 elapsed, ETA 1:18:20"
    lines = _run(1000, 0.5, total=False)  # no total: every 30 s
    assert len(lines) == 17 and lines[0].startswith("fine-tune: 60 it, 0:30 elapsed")
    assert lines[-1].startswith("fine-tune: 1000 it, 8:20 elapsed, done")


def test_a_stage_under_thirty_seconds_writes_nothing():
    assert _run(1000, 0.029) == []


def test_plain_lines_when_stderr_is_not_a_terminal(capsys):
    bar = P.progress(range(3), desc="x")
    assert isinstance(bar, P.Lines)
    assert not isinstance(P.progress(range(3), desc="x", disable=True), P.Lines)
    list(bar)
    assert capsys.readouterr() == ("", "")  # three quick items: no line


def test_training_reports_its_loss_in_a_log(capsys, monkeypatch):
    from singe_deploy.training.loops import train_iters

    monkeypatch.setattr(P, "EVERY_SECONDS", 0.0)
    monkeypatch.setattr(P, "EVERY_FRACTION", 0.5)
    torch.manual_seed(0)
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,))) for _ in range(2)]
    train_iters(TinyNet(), loader, 4, 0.01, desc="fine-tune step 1")
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err == "" and len(lines) == 2 and lines[0].startswith("fine-tune step 1: 2/4 it (50%), loss=")
    assert "ETA" in lines[0] and "4/4 it (100%)" in lines[1] and lines[1].endswith("done")
