"""instrument/ never imports torch or onnx: the live engine must load without the offline half."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"torch", "onnx", "onnxscript", "safetensors", "training", "export"}


def _imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_no_instrument_module_imports_torch_or_onnx():
    files = sorted((ROOT / "instrument").rglob("*.py"))
    assert files
    offenders = {}
    for f in files:
        bad = _imported_roots(f.read_text()) & FORBIDDEN
        if bad:
            offenders[str(f.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"instrument/ must not import the offline half: {offenders}"


def test_the_checker_sees_imports():
    assert _imported_roots("import torch.nn as nn\nfrom onnx import helper\n") == {"torch", "onnx"}
    assert _imported_roots("import importlib\nimportlib.import_module('torch')") == {"importlib", "torch"}


def test_runtime_modules_load_without_torch():
    code = (
        "import sys\n"
        "import instrument.model, instrument.render\n"
        "import neuralinst.cli\n"
        "bad = sorted(m for m in ('torch', 'onnx', 'onnxscript') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"importing the runtime loaded {r.stdout.strip()}"
