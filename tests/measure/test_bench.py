import numpy as np

from singe_deploy.measure import bench


def _calls(ms, paired=True):
    return {"calls_ms": list(ms), "paired": paired}


def test_a_speedup_is_the_ratio_of_medians_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    dense = 1.0 + 0.1 * rng.standard_normal(2000)
    s = bench.speedup(_calls(dense), _calls(dense / 2))
    assert s["verdict"] == "faster" and abs(s["speedup"] - 2.0) < 1e-9
    assert s["ci95"][0] <= s["speedup"] <= s["ci95"][1] and s["ci95"][0] > 1


def test_the_same_model_twice_is_no_measurable_speedup_and_never_a_slowdown():
    rng = np.random.default_rng(1)
    a, b = (1.0 + 0.2 * rng.standard_normal(500) for _ in range(2))
    s = bench.speedup(_calls(a), _calls(b))
    assert s["ci95"][0] < 1 < s["ci95"][1] and s["verdict"] == "no measurable speedup"
    assert bench.says(s).startswith("no measurable speedup (95%: ")


def test_a_clear_slowdown_is_called_one():
    rng = np.random.default_rng(2)
    dense = 1.0 + 0.05 * rng.standard_normal(500)
    assert bench.speedup(_calls(dense), _calls(dense * 1.5))["verdict"] == "slower"


def test_pairing_by_round_cancels_drift_that_both_sides_share():
    rng = np.random.default_rng(3)
    drift = np.exp(0.5 * rng.standard_normal(400))  # the machine's speed, round by round
    dense, pruned = drift * 1.0, drift * 0.8 * (1 + 0.01 * rng.standard_normal(400))
    paired = bench.speedup(_calls(dense), _calls(pruned))
    apart = bench.speedup(_calls(dense, False), _calls(pruned, False))
    assert paired["paired"] and not apart["paired"]
    width = lambda s: s["ci95"][1] - s["ci95"][0]
    assert paired["verdict"] == "faster" and width(paired) < width(apart) / 5


def test_interleaved_timing_returns_each_backends_calls_by_round():
    class Sleepy:
        name, device, threads = "fake", "cpu", 1

        def __init__(self, seconds):
            self.seconds = seconds

        def infer(self, x):
            import time

            time.sleep(self.seconds)
            return x

    stats = bench.measure_interleaved([Sleepy(0.002), Sleepy(0.001)], [1, 2], 1, warmup_iters=1, min_iters=20,
                                      min_seconds=0)
    assert [len(s["calls_ms"]) for s in stats] == [20, 20] and all(s["paired"] for s in stats)
    assert bench.speedup(stats[0], stats[1])["verdict"] == "faster"
