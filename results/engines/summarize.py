"""Table of preset-vs-ort.jsonl: INT8 accuracy per engine, activations, range estimator and overflow fix."""

import json
import sys
from collections import defaultdict

DEFAULT_FIX = {"openvino": "first_layer_only", "onnxruntime": "disable"}  # each engine's default
rows = [json.loads(line) for line in open(sys.argv[1])]
table, fp32 = defaultdict(dict), {}
for r in rows:  # the newest row of a (configuration, set) counts
    key = (r["engine"], r["activations"], r["calibrate_method"], r.get("overflow_fix", DEFAULT_FIX[r["engine"]]))
    table[key][r["calib_set"].rsplit("-s", 1)[-1]] = (r["int8_accuracy"], r["int8_agreement"])
    fp32[r["engine"]] = r["fp32_accuracy"]
seeds = sorted({s for v in table.values() for s in v})
print("FP32 accuracy:", fp32)
print("| engine | activations | range estimator | weights on half the range | "
      + " | ".join(f"set s{s}" for s in seeds) + " | mean INT8 | change vs FP32 | agreement with FP32 |")
print("|---" * (7 + len(seeds)) + "|")
for (engine, acts, method, fix), per in sorted(table.items()):
    accs = [per[s][0] for s in seeds if s in per]
    agree = [per[s][1] for s in seeds if s in per]
    mean = sum(accs) / len(accs)
    print(f"| {engine} | {acts} | {method} | {fix} | "
          + " | ".join(f"{per[s][0]:.4f}" if s in per else "-" for s in seeds)
          + f" | {mean:.4f} | {100 * (mean - fp32[engine]):+.2f} pts | {sum(agree) / len(agree):.4f} |")
