"""Where a profiled study cell spent its time, by phase of NNCF's work: a cProfile file in, one table out.

    python -c "import cProfile; from pathlib import Path; from calib.study.runner import run_study; \
cProfile.run('run_study(Path(\"grid.toml\"), Path(\"run\"), progress=False)', 'cell.prof')"
    python scripts/profile_phases.py cell.prof

Cumulative seconds of the functions that make up a cell (they nest: the accuracy-aware search contains a
default quantization, validations and the ranking of quantizer groups), and of the two primitives everything
else calls: OpenVINO's compile_model and inference.
"""

from __future__ import annotations

import pstats
import sys

NNCF = "nncf/quantization/algorithms"
PHASES = [  # (label, file suffix, function name)
    ("study cell (all of it)", "calib/study/cells.py", "run_cell"),
    ("FP32 export (once per model)", "calib/study/artifacts.py", "fp32_export"),
    ("nncf.quantize_with_accuracy_control", "nncf/openvino/quantization/quantize_model.py",
     "quantize_with_accuracy_control_impl"),
    ("  default INT8 (nncf.quantize; every cell)", "nncf/openvino/quantization/quantize_model.py",
     "native_quantize_impl"),
    ("    statistics collection", "nncf/common/tensor_statistics/aggregator.py", "collect_statistics"),
    ("    fast bias correction", f"{NNCF}/fast_bias_correction/algorithm.py", "apply"),
    ("  validation (calib's validation function)", "calib/core/engines/openvino.py", "_validation_fn"),
    ("  restoring accuracy (ranking and reverting)", f"{NNCF}/accuracy_control/algorithm.py", "_apply"),
    ("    ranking of quantizer groups", f"{NNCF}/accuracy_control/ranker.py", "rank_groups_of_quantizers"),
    ("final evaluation on the test images", "calib/core/evaluate.py", "evaluate"),
    ("OpenVINO compile_model (every call)", "~", "<built-in method openvino._pyopenvino.compile_model>"),
    ("OpenVINO inference (every call)", "~", "<built-in method openvino._pyopenvino.infer>"),
]


def main(path: str) -> None:
    stats = pstats.Stats(path).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    total = max(ct for (_, _, name), (_, _, _, ct, _) in stats.items() if name == "run_study") if any(
        name == "run_study" for (_, _, name) in stats) else None
    print("| phase | calls | seconds (cumulative) | share of the run |")
    print("|---|---|---|---|")
    for label, suffix, func in PHASES:
        hits = [(nc, ct) for (file, _, name), (_, nc, _, ct, _) in stats.items()
                if name == func and (file.endswith(suffix) or suffix == "~")]
        if not hits:
            print(f"| {label} | 0 | - | - |")
            continue
        calls, seconds = sum(h[0] for h in hits), max(h[1] for h in hits) if suffix != "~" else sum(
            h[1] for h in hits)
        share = f"{100 * seconds / total:.0f} %" if total else "-"
        print(f"| {label} | {calls} | {seconds:.1f} | {share} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/profile_phases.py FILE.prof")
    main(sys.argv[1])
