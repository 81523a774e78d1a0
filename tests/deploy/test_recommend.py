"""The deployable to ship: the fastest file within the accuracy rule, a quantized file only where it buys speed."""
from singe_deploy.deploy.recommend import MIN_GAIN, recommend, says


def _row(name, accuracy, ms, fmt="onnx"):
    variant, _, precision = name.partition(".")
    return {"name": name, "variant": variant, "format": fmt, "precision": precision or "fp32",
            "path": f"{name}.onnx", "accuracy": accuracy, "latency_ms": {"1": ms, "8": ms * 6}}


def _table(int8=(0.9400, 0.390), fp16=(0.9300, 0.300)):
    return [_row("dense", 0.9421, 0.613), _row("pruned", 0.9406, 0.378),
            _row("pruned.int8", *int8), _row("pruned.fp16", *fp16)]


def test_a_slower_int8_and_an_fp16_outside_the_rule_leave_pruned_fp32_as_the_file_to_ship():
    rows = _table()
    rec = recommend(rows)
    assert rec["path"] == "pruned.onnx"
    why = {x["path"]: x["why"] for x in rec["rejected"]}
    assert "under the 1.02x" in why["pruned.int8.onnx"]          # 0.97x the fp32 file's speed
    assert "below 93.56%" in why["pruned.fp16.onnx"]             # 0.5 points under pruned fp32's 94.06%
    flagged = {r["name"]: r.get("slower_than_pruned_fp32") for r in rows}
    assert flagged == {"dense": True, "pruned": None, "pruned.int8": True, "pruned.fp16": False}


def test_the_fastest_file_within_the_rule_is_chosen_and_the_line_names_it():
    rec = recommend(_table(int8=(0.9403, 0.260)))
    assert (rec["path"], rec["precision"], rec["batch_size"]) == ("pruned.int8.onnx", "int8", 1)
    assert abs(rec["speedup_over_dense"] - 0.613 / 0.260) < 1e-9
    assert says(rec, "OUT").startswith("ship OUT/pruned.int8.onnx (int8, 0.260 ms at batch 1, 94.03%)")


def test_a_quantized_file_must_be_at_least_2_percent_faster_than_fp32():
    just_under = 0.378 / (MIN_GAIN - 0.005)
    assert recommend(_table(int8=(0.9406, just_under)))["path"] == "pruned.onnx"
    just_over = 0.378 / (MIN_GAIN + 0.005)
    assert recommend(_table(int8=(0.9406, just_over)))["path"] == "pruned.int8.onnx"


def test_an_accuracy_budget_below_dense_admits_what_the_default_rule_refuses():
    rows = _table(fp16=(0.9330, 0.300))  # 0.91 points below dense, 0.76 below pruned fp32
    assert recommend(rows)["path"] == "pruned.onnx"
    rec = recommend(rows, max_drop=1.0)
    assert rec["path"] == "pruned.fp16.onnx" and abs(rec["accuracy_drop_points"] - 0.91) < 1e-9
    assert recommend(rows, max_drop=0.8)["path"] == "pruned.onnx"


def test_without_accuracies_no_quantized_file_is_recommended_and_without_timings_nothing_is():
    rows = [dict(r, accuracy=None) for r in _table(int8=(None, 0.2))]
    rec = recommend(rows)
    assert rec["path"] == "pruned.onnx" and "synthetic" in rec["rule"]
    assert recommend([dict(r, latency_ms={}) for r in _table()]) is None


def test_the_choice_is_made_at_batch_1_or_the_smallest_batch_timed():
    rows = [dict(r, latency_ms={"8": r["latency_ms"]["8"]}) for r in _table(int8=(0.9403, 0.260))]
    rec = recommend(rows)
    assert (rec["batch_size"], rec["path"]) == (8, "pruned.int8.onnx")
