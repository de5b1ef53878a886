"""calib: synthetic calibration data and an INT8 post-training-quantization study.

Layers, lowest first (import-linter enforces them): ``calib.core`` (data, sets, zoo, sources, engines,
quantize, evaluate, diagnose, runs), ``calib.distylegan`` (generators, plugged in as sources),
``calib.study`` (grids, runner, report), ``calib.cli`` (parses and calls).
"""

__version__ = "0.1.0"
