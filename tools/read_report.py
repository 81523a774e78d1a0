"""What a deployment script usually reads from a compress report (docs/guide/python.md shows it whole).

    python tools/read_report.py OUT/report.json
"""
import json
import sys
from pathlib import Path

report = json.loads(Path(sys.argv[1]).read_text())
dense, pruned = report["dense"], report["pruned"]
print(f"MACs {dense['macs']:,} -> {pruned['macs']:,} ({report['reduction']['macs']:.2f}x fewer)")
print(f"accuracy {dense['accuracy']:.4f} -> {pruned['accuracy']:.4f}")
for row in report["deployables"]:                       # one row per file: fp32, fp16, int8, engines
    speed = row["speedup"].get("1", {}).get("speedup")  # over dense, at batch 1; none for dense itself
    print(f"{row['path']:20} {row['precision']:5} accuracy {row['accuracy']}", f"{speed:.2f}x" if speed else "")
print("checks passed" if report["checks"]["passed"] else f"checks failed: {report['checks']['failures']}")
