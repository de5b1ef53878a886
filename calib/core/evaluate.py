"""Top-1 accuracy on test images with the engine that reads the model file, and its predictions: the one
evaluator of zoo models and your own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calib.core.contract import InputContract
from calib.core.contract import to_model_input as by_contract
from calib.core.data import LabeledImages, indices_sha256, require_role, to_model_input
from calib.core.engines import Engine, engine_for_file


def evaluate(model: str | Path, test: LabeledImages, batch: int = 50, engine: Engine | None = None,
             contract: InputContract | None = None) -> dict:
    """Accuracy, per-image predictions (in the order of `test`), inference images/s, and which test images these
    were (`test_images`, `test_indices_sha256`); `test` must have the role "test" (the whole split or
    `calib.core.data.final_test`). `model` is a file (its engine is chosen by suffix) or, with `engine`,
    anything that engine opens (an `ov.Model`). Images become inputs by `contract` (your own model's), else by
    the zoo's normalization."""
    require_role(test, ("test",), "final accuracy")
    engine = engine or engine_for_file(model)
    x = to_model_input(test.images) if contract is None else by_contract(test.images, contract)
    preds, fps = engine.predict(model, x, batch)
    preds = np.asarray(preds, np.int64)
    return {"accuracy": float((preds == test.labels).mean()), "images": len(test), "eval_fps": round(fps, 1),
            "eval_batch": batch, "engine": engine.name, "test_images": len(test),
            "test_indices_sha256": indices_sha256(test), "predictions": preds}
