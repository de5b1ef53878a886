"""Top-1 accuracy on the test split with the engine that reads the model file, and its predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.data import LabeledImages, require_role, to_model_input
from calibration.engines import Engine, engine_for_file


def evaluate(model: str | Path, test: LabeledImages, batch: int = 50, engine: Engine | None = None) -> dict:
    """Accuracy, per-image predictions (test-split order) and inference images/s; `test` must be the test split.
    `model` is a file (its engine is chosen by suffix) or, with `engine`, anything that engine opens."""
    require_role(test, ("test",), "final accuracy")
    engine = engine or engine_for_file(model)
    preds, fps = engine.predict(model, to_model_input(test.images), batch)
    preds = np.asarray(preds, np.int64)
    return {"accuracy": float((preds == test.labels).mean()), "images": len(test), "eval_fps": round(fps, 1),
            "eval_batch": batch, "engine": engine.name, "predictions": preds}
