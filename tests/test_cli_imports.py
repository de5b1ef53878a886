"""`calib --help` and every group's --help load no heavy library: commands import what they call when they run."""

import json
import subprocess
import sys

HEAVY = ("torch", "torchvision", "nncf", "openvino", "onnxruntime", "onnx", "pandas", "seaborn", "matplotlib",
         "datumaro", "scipy", "numpy")
GROUPS = ((), ("zoo",), ("sets",), ("study",), ("benchmark",), ("distylegan",))

# run in a fresh interpreter: this test process has long imported all of them
SCRIPT = """
import json, sys
import calib.cli

codes = {}
for path in %r:
    sys.argv = ["calib", *path, "--help"]
    try:
        calib.cli.main()
    except SystemExit as e:
        codes[" ".join(path) or "calib"] = e.code
print(json.dumps({"codes": codes, "heavy": sorted(m for m in %r if m in sys.modules)}))
"""


def test_help_imports_nothing_heavy():
    proc = subprocess.run([sys.executable, "-c", SCRIPT % (GROUPS, HEAVY)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == {" ".join(p) or "calib": 0 for p in GROUPS}, proc.stdout
    assert "Usage: calib zoo" in proc.stdout and "Commands:" in proc.stdout
    assert result["heavy"] == [], f"imported by `calib --help`: {result['heavy']}"
