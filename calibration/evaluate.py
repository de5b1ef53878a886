"""Top-1 accuracy through OpenVINO: batched, asynchronous (`AsyncInferQueue`), FP32 kept at f32 precision."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from calibration.data import LabeledImages, to_model_input


def compile_model(model, precision: str = "f32", hint: str = "THROUGHPUT", batch: int | None = None,
                  threads: int | None = None):
    """Compile an `ov.Model` or `.xml` for CPU; `batch` reshapes the input to a static batch first."""
    import openvino as ov

    core = ov.Core()
    if isinstance(model, str | Path):
        model = core.read_model(str(model))
    if batch is not None:
        model.reshape({model.input(0).get_any_name(): [batch, 3, 32, 32]})
    config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(model, "CPU", config)


def predict(model, images: np.ndarray, batch: int = 50, precision: str = "f32") -> tuple[np.ndarray, float]:
    """Class predictions and the pure inference throughput (images/s; preprocessing done beforehand)."""
    import openvino as ov

    compiled = compile_model(model, precision, "THROUGHPUT", batch)
    x = to_model_input(images)
    n = len(x)
    pad = (-n) % batch
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    preds = np.empty(len(x), np.int64)

    def done(request, start):
        preds[start : start + batch] = request.get_output_tensor(0).data.argmax(1)

    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue.set_callback(done)
    t0 = time.perf_counter()
    for start in range(0, len(x), batch):
        queue.start_async({0: x[start : start + batch]}, userdata=start)
    queue.wait_all()
    seconds = time.perf_counter() - t0
    return preds[:n], n / seconds


def evaluate(model, test: LabeledImages, batch: int = 50, precision: str = "f32") -> dict:
    """Accuracy on the test split with its throughput; `test` must be the test split."""
    from calibration.data import require_role

    require_role(test, ("test",), "final accuracy")
    preds, fps = predict(model, test.images, batch, precision)
    return {"accuracy": float((preds == test.labels).mean()), "images": len(test), "eval_fps": round(fps, 1),
            "eval_batch": batch, "precision_hint": precision}
