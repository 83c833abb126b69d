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


_SESSION_SERVER: list[JackServer] = []  # the running session server, for the per-test check below


@pytest.fixture(scope="session")
def jack_server():
    """The real JACK server (dummy driver, 48 kHz, 128 frames). Missing jackd is a failure, not a skip."""
    server = JackServer().start()
    _SESSION_SERVER.append(server)
    yield server
    _SESSION_SERVER.clear()
    server.stop()


@pytest.fixture(autouse=True)
def _jack_server_still_running(request):
    """Names the test during which the session's JACK server died, with jackd's last words (every later test
    that needs the server would otherwise fail with a vague 'JACK server not running?')."""
    yield
    if _SESSION_SERVER and (died := _SESSION_SERVER[0].died()):
        _SESSION_SERVER.clear()
        pytest.fail(f"the session's JACK server died during {request.node.nodeid}: {died}")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
