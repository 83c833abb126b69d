"""The UI in its own process (instrument/uiproc.py): keys in the child drive the engine in this process over the
link, recordings survive a UI that dies, and the snapshots carry the parameter list only when it changes."""
import os
import signal
import time

import numpy as np
import pytest
import soundfile as sf

from instrument.engine import Engine, EngineConfig
from instrument.mapping import Performance
from instrument.presets import load_preset
from instrument.uiproc import SNAPSHOT_HZ, UiHost
from jackserver import wait_for
from test_tui import presets_env, shipped  # noqa: F401  (fixtures)


def start(preset_name: str):
    preset = load_preset(preset_name)
    engine = Engine(EngineConfig(output="jack", block=128)).start(preset)
    performance = Performance(engine, preset, save_learned=False)
    return engine, performance


def test_keys_in_the_ui_process_drive_the_engine_here(jack_server, presets_env):
    engine, performance = start("tiny-a")
    first = performance.bank.names[0]
    spec = performance.bank.specs[first]
    before = performance.bank.get(first)
    keys = ["right", "ctrl+r", "z"]
    host = UiHost(engine, performance, record_dir=presets_env,
                  headless={"keys": keys, "seconds": 2.0, "key_gap": 0.1}).start()
    try:
        assert host.pid != os.getpid()
        code = host.wait(60)
    finally:
        host.close()
        performance.close()
        stats = engine.stop()
    assert code == 0
    # The nudge went through the engine's own bank (one keyboard step = 1/64 of the range) and reached the model.
    assert performance.bank.get(first) == pytest.approx(spec.from_unit(spec.to_unit(before) + 1 / 64))
    # Quitting while recording asked, the headless plan said yes, and the take was finished with the note in it.
    assert len(host.recorded) == 1 and not stats.recording
    audio, sr = sf.read(host.recorded[0])
    assert sr == 48000 and np.abs(audio).max() > 0.05
    # The link pulled snapshots all along (~SNAPSHOT_HZ over the ~3 s the app ran).
    assert host.requests > SNAPSHOT_HZ * 2
    assert stats.blocks > 0.5 * 48000 / 128 * stats.elapsed


def test_a_ui_that_dies_mid_take_leaves_the_recording_whole(jack_server, presets_env):
    engine, performance = start("tiny-a")
    host = UiHost(engine, performance, record_dir=presets_env,
                  headless={"keys": ["ctrl+r", "z"], "seconds": 60, "key_gap": 0.1}).start()
    try:
        assert wait_for(lambda: engine.stats().recording, 30)
        time.sleep(0.5)  # the note plays into the take
        os.kill(host.pid, signal.SIGKILL)
        assert host.wait(10) == -signal.SIGKILL
        host.close()  # notes the take the UI left running
        (path,) = host.recorded
        assert engine.stats().recording == str(path)
    finally:
        host.close()
        performance.close()
        engine.stop()  # finishes the file
    audio, sr = sf.read(path)
    assert sr == 48000 and np.abs(audio).max() > 0.05 and len(audio) > 0.3 * sr


def test_snapshots_carry_the_parameter_list_only_after_a_switch(jack_server, presets_env):
    engine, performance = start("tiny-a")
    host = UiHost(engine, performance)  # not started: its answers are read directly
    try:
        first, again = host.snapshot(), host.snapshot()
        assert [s.name for s in first.specs] == performance.bank.names and again.specs is None
        assert again.preset.name == "tiny-a" and again.model["label"] == "onnx CPU"
        assert again.values == performance.bank.values and again.stats.samplerate == 48000
        performance.switcher.select_name("tiny-b")
        assert wait_for(lambda: performance.preset.name == "tiny-b", 30)
        switched = host.snapshot()
        assert switched.generation == again.generation + 1 and switched.specs is not None
        assert switched.preset.name == "tiny-b"
    finally:
        host.close()
        performance.close()
        engine.stop()
