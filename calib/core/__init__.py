"""The library: data, sets, zoo, sources, engines, quantize, evaluate, diagnose, runs.

It never imports calib.study, calib.cli or the generators (import-linter checks it).
"""
