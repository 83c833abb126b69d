import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jackserver import JackServer, configure_environment  # noqa: E402

configure_environment()  # before any test imports sounddevice, rtmidi, jack or pyo
os.environ.setdefault("OMP_NUM_THREADS", "1")

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def jack_server():
    """The real JACK server (dummy driver, 48 kHz, 128 frames). Missing jackd is a failure, not a skip."""
    server = JackServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
