"""Compiled inner loops for the live engine (C, loaded with ctypes; built by instrument/native/build.py)."""
