"""Old import path: ONNX Runtime is the engine module `calibration.engines.onnxruntime`."""

from calibration.engines.onnxruntime import ItemReader, session

__all__ = ["ItemReader", "session"]
