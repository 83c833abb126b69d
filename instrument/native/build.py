"""Compile the native loops (samplernn.c, vrnn.c) into one shared library beside them, with the system C compiler.

    python instrument/native/build.py [--quiet] [--force]

Rebuilt only when a source is newer than the library. `-march=native` because the library is built on the
machine that plays (./dev setup runs this); `-ffast-math` lets the compiler vectorise the dot products (the
rounding differences are covered by the adjacent-level flip rule, see tests/test_native.py).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "samplernn.c", HERE / "vrnn.c")
LIBRARY = HERE / "_native.so"
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fPIC", "-shared", "-std=c11", "-Wall"]


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def needs_build() -> bool:
    return not LIBRARY.exists() or LIBRARY.stat().st_mtime < max(s.stat().st_mtime for s in SOURCES)


def build(force: bool = False, quiet: bool = False) -> Path:
    """Build the library if needed; returns its path. Raises RuntimeError with the compiler's message."""
    if not force and not needs_build():
        return LIBRARY
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc or set CC)")
    tmp = LIBRARY.with_suffix(f".{os.getpid()}.tmp")
    cmd = [cc, *FLAGS, "-o", str(tmp), *map(str, SOURCES), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    os.replace(tmp, LIBRARY)  # atomic: a concurrent loader never sees half a library
    if not quiet:
        print(f"built {LIBRARY.relative_to(HERE.parent.parent)} with {cc} {' '.join(FLAGS)}")
    return LIBRARY


_LOADED: dict = {}  # what -> the ctypes.CDLL already checked and described for it


def load(what: str, abi_function: str, abi_version: int, signatures: dict):
    """The library as a ctypes.CDLL, built first if needed, with `abi_function()` == `abi_version` checked and each
    function in `signatures` (name -> (argtypes, restype)) described; cached per `what`, the loop's name in the
    one-sentence errors ("the native SampleRNN loop")."""
    if what in _LOADED:
        return _LOADED[what]
    import ctypes

    from instrument.errors import UserError

    try:
        path = build(quiet=True)
    except RuntimeError as e:
        raise UserError(f"{what} could not be built: {e}.") from None
    lib = ctypes.CDLL(str(path))
    version = getattr(lib, abi_function)
    version.restype = ctypes.c_int
    if version() != abi_version:
        raise UserError(f"{path} is stale ({what}: ABI {version()}, expected {abi_version}); rebuild it.")
    for name, (argtypes, restype) in signatures.items():
        getattr(lib, name).argtypes, getattr(lib, name).restype = argtypes, restype
    _LOADED[what] = lib
    return lib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        build(force=args.force, quiet=args.quiet)
    except RuntimeError as e:
        print(f"native build: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
