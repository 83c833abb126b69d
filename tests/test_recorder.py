"""Recording: exact, readable at every moment, and a kill -9 loses at most the last half second."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jackutil import tiny_model

from instrument.errors import UserError
from instrument.recorder import Recorder

ROOT = Path(__file__).resolve().parent.parent


def test_recorder_writes_exactly_what_was_pushed_and_is_readable_meanwhile(tmp_path):
    data = np.random.default_rng(0).uniform(-1, 1, (48000, 2)).astype(np.float32)
    path = tmp_path / "take.wav"
    rec = Recorder(path, 48000, 2, flush_seconds=0.1)
    half = 188 * 128
    for i in range(0, half, 128):
        rec.push(data[i:i + 128])
    time.sleep(0.5)  # the writer drains and rewrites the header while still open
    partial, rate = sf.read(path, dtype="float32")
    assert rate == 48000 and len(partial) == half
    np.testing.assert_array_equal(partial, data[:half])
    for i in range(half, 48000, 128):
        rec.push(data[i:i + 128])
    assert rec.close() == path and rec.dropped_frames == 0
    np.testing.assert_array_equal(sf.read(path, dtype="float32")[0], data)


def test_flac_round_trip_and_bad_paths_are_one_sentence(tmp_path):
    data = (0.5 * np.sin(np.arange(9600) / 10)).astype(np.float32)[:, None]
    rec = Recorder(tmp_path / "take.flac", 48000, 1)
    rec.push(data)
    rec.close()
    back, _ = sf.read(tmp_path / "take.flac", dtype="float32")
    assert np.abs(back[:, None] - data).max() < 1e-6
    for bad in (tmp_path / "take.mp3", tmp_path / "missing" / "take.wav"):
        with pytest.raises(UserError) as e:
            Recorder(bad, 48000, 2)
        assert "\n" not in str(e.value)


def test_kill_9_during_recording_leaves_a_readable_wav(tmp_path_factory, tmp_path):
    model = tiny_model(tmp_path_factory, "vrnn-tiny")
    path = tmp_path / "killed.wav"
    proc = subprocess.Popen([sys.executable, "-m", "neuralinst", "play", "--model", str(model), "--no-tui",
                             "--seconds", "60", "--output", "none", "--record", str(path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 60
        while not path.exists() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.005)
        assert path.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no file"
        created = time.monotonic()
        time.sleep(2.5)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    audio, rate = sf.read(path, dtype="float32")
    played = killed - created
    kept = len(audio) / rate
    print(f"played {played:.2f} s, the killed file holds {kept:.2f} s")
    assert rate == 48000 and audio.shape[1] == 2 and np.abs(audio).max() > 0.01
    assert kept >= played - 0.5 - 0.1  # 0.1 s: the stream starts just after the file is created
