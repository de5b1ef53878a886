"""Drive Sony MCT's data generation in its own venv: a subprocess writes an .npz that calib reads back.

MCT pins packages older than calib's environment holds, so it never shares calib's interpreter:
`scripts/mct-venv.sh` makes `.venv-mct`, and `CALIB_MCT_PYTHON` may point at any other interpreter that
has MCT. calib works without it; only the MCT rows of `calib benchmark inversion` need it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib.core.errors import CalibError

REPO = Path(__file__).resolve().parents[3]
VENV_SCRIPT = REPO / "scripts" / "mct-venv.sh"


@dataclass(frozen=True)
class MCTRun:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # the FP32 model's argmax
    seconds: float  # MCT's generation alone, timed inside the subprocess
    info: dict  # MCT version and the effective settings


def mct_python() -> Path:
    """The interpreter that has MCT: `$CALIB_MCT_PYTHON`, else `<repo>/.venv-mct/bin/python`."""
    env = os.environ.get("CALIB_MCT_PYTHON")
    path = Path(env) if env else REPO / ".venv-mct" / "bin" / "python"
    if not path.is_file():
        raise CalibError(f"no MCT interpreter at {path}; run {VENV_SCRIPT.relative_to(REPO)} (or set CALIB_MCT_PYTHON)")
    return path


def mct_generate(model: str, images: int, seed: int, weights: Path | None = None, n_iter: int | None = None,
                 batch_size: int | None = None, extra_pixels: int | None = None, threads: int | None = None,
                 timeout: float | None = None) -> MCTRun:
    """`images` images from MCT's `pytorch_data_generation_experimental`; None keeps MCT's default."""
    args = {"--model": model, "--images": images, "--seed": seed, "--weights": weights, "--n-iter": n_iter,
            "--batch-size": batch_size, "--extra-pixels": extra_pixels, "--threads": threads}
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "mct.npz"
        cmd = [str(mct_python()), "-m", "calib.core.peers.mct_generate", "--out", str(out)]
        cmd += [str(x) for k, v in args.items() if v is not None for x in (k, v)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            raise CalibError(f"MCT data generation did not finish in {timeout} s") from None
        if r.returncode != 0 or not out.exists():
            tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise CalibError(f"MCT data generation failed (exit {r.returncode}): {tail}")
        with np.load(out) as z:
            return MCTRun(z["images"], z["labels"], float(z["seconds"]), json.loads(str(z["info"])))
