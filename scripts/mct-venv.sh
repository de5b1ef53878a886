#!/usr/bin/env bash
# Sony's Model Compression Toolkit (MCT) in its own venv, for `calib benchmark inversion` only.
# MCT 2.6.1 pins matplotlib<3.10, pydantic<2.12 and networkx<3.6, older than what calib's environment
# holds, so it gets a venv that shares the system torch (--system-site-packages) and installs only
# MCT with its pins; calib itself never imports MCT.
# Usage: scripts/mct-venv.sh [VENV_DIR]   (default .venv-mct; point CALIB_MCT_PYTHON at VENV_DIR/bin/python)
set -euo pipefail
VENV=${1:-.venv-mct}
PY=${PYTHON:-python3}
"$PY" -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install --quiet "model-compression-toolkit==2.6.1"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import model_compression_toolkit as mct
import torch
print("MCT", md.version("model-compression-toolkit"), "torch", torch.__version__,
      "matplotlib", md.version("matplotlib"), "pydantic", md.version("pydantic"), "networkx", md.version("networkx"))
assert hasattr(mct.data_generation, "pytorch_data_generation_experimental")
PY
