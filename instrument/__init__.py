"""The live half of neuralinst: numpy, onnxruntime, sounddevice, python-rtmidi, pyo and textual only.

Nothing in this package may import torch (tests/test_layering.py checks it).
"""
