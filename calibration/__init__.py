"""calib: synthetic calibration data and an INT8 post-training-quantization study."""

__version__ = "0.1.0"
