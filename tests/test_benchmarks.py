"""The live benchmarks run for real (short forms) through the session's JACK server, and their JSON holds
plausible figures. Speed targets are not asserted here: they are measured by the benchmarks themselves."""
import json
import time

import numpy as np
import pytest

from instrument.jack_midi import FRAME_WRAP, FrameClock


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from benchmarks.note_latency import export_configs

    folder = tmp_path_factory.mktemp("bench-models")
    export_configs(["wavegan-tiny", "vrnn-tiny"], folder)
    return folder


def _result(folder, name):
    doc = json.loads((folder / f"{name}.json").read_text())
    assert doc["benchmark"] == name and "machine" in doc and "load_average" in doc["machine"]
    return doc["figures"]


def test_frame_clock_is_exact_in_frames_and_unwraps():
    clock = FrameClock(48000)
    start = FRAME_WRAP - 300  # wraps 300 frames in
    clock.observe(start, 1000.0)
    for k in range(1, 20):
        clock.observe((start + 128 * k) % FRAME_WRAP, 1000.0 + 128 * k / 48000 + 0.0003)
    a, b = clock.seconds(start + 100), clock.seconds((start + 1000) % FRAME_WRAP)
    assert abs((b - a) * 48000 - 900) < 1e-6
    assert abs(clock.seconds(start) - 1000.0) < 1e-9  # anchored where it started


def test_frame_clock_slews_gently_towards_the_monotonic_clock():
    clock = FrameClock(48000)
    clock.observe(0, 0.0)
    frame, t = 0, 0.0
    for _ in range(3 * 375):  # 3 s of cycles while the audio clock runs 1 % slow against monotonic time
        frame += 128
        t += 128 / 48000 * 1.01
        clock.observe(frame, t)
    before = clock.seconds(frame)
    assert 0 < t - before  # behind, and catching up...
    assert abs((t - before) - (t - frame / 48000)) > 0  # ...by at most 20 µs a second
    assert (t - frame / 48000) - (t - before) <= 3 * 20e-6 + 1e-9


def test_jack_midi_input_stamps_events_to_the_frame(jack_server):
    from benchmarks.note_latency import Probe
    from instrument.jack_midi import JackMidiInput

    got = []
    midi = JackMidiInput(lambda m: got.append(m), name="neuralinst-midi-test").start()
    probe = Probe(0.0, name="neuralinst-probe-test")
    try:
        sched = [(24000 + 997 * i, bytes([0x90, 60 + i, 100])) for i in range(8)]
        probe.schedule(sched)
        probe.client.activate()
        probe.client.connect(probe.midi_out, midi.port_name)
        probe._armed = True
        deadline = time.monotonic() + 5
        while len(got) < len(sched) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        probe.close()
        midi.close()
    assert [m.a for m in got] == [60 + i for i in range(8)] and all(m.kind == "note_on" for m in got)
    gaps = np.diff([m.time for m in got]) * jack_server.rate
    assert np.allclose(gaps, 997, atol=0.01), gaps  # the in-cycle offsets survive: not rounded to blocks


def test_note_latency_quick(models, tmp_path):
    _bench("note", ["--quick", "--notes", "10", "--configs", "wavegan-tiny,vrnn-tiny",
                    "--models", str(models), "--out", str(tmp_path)])
    fig = _result(tmp_path, "note_latency")
    rows = {r["config"]: r for r in fig["rows"]}
    assert set(rows) == {"wavegan-tiny", "vrnn-tiny"} and fig["samplerate"] == 48000
    one = rows["wavegan-tiny"]
    assert one["mode"] == "oneshot" and one["midi"] == "jack" and one["notes"] == 10
    assert one["detected"] >= 8  # an xrun on a loaded machine may eat a note; none found is a broken path
    lat = one["latency_ms"]
    # Typically sound comes after the engine's scheduling delay (one block + 2 ms), never seconds late. (A single
    # note can come early when a server xrun makes the engine read a later cycle's clock: p1 is not asserted.)
    assert 0 <= lat["p1"] <= lat["p50"] <= lat["p99"] < 100 and 2.6 < lat["p50"] < 50
    assert one["jitter_ms"] >= 0 and 0 <= one["clean_notes"] <= one["detected"]
    stream = rows["vrnn-tiny"]
    assert stream["mode"] == "stream" and stream["method"] == "xcorr" and stream["detected"] >= 1
    assert 2.6 < stream["latency_ms"]["p50"] < 100
    # A reset-on-note stream is cued: every note heard is played from a pre-rendered take (instrument/cue.py).
    assert 1 <= stream["cued_resets"] <= stream["notes"] and stream["late_cues"] == 0
    for r in fig["rows"]:
        assert isinstance(r["underruns"], int) and isinstance(r["meets_target"], bool)
        assert r["missing"] == r["notes"] - r["detected"] and 0 <= r["missing_near_xrun"] <= r["missing"]


def test_switch_latency_quick(models, tmp_path):
    _bench("switch", ["--switches", "4", "--interval-ms", "500", "--models",
                      str(models), "--out", str(tmp_path)])
    fig = _result(tmp_path, "switch_latency")
    # Requests coalesce and a loaded machine loads slowly: some switches may merge, none at all is a failure.
    assert fig["switches"] == 4 and fig["switched"] >= 1 and fig["detected"] >= 1
    assert fig["loud"]["level_db"] - fig["quiet"]["level_db"] > 10  # the two presets really differ
    assert 0 < fig["latency_ms"]["p50"] < 500 and isinstance(fig["underruns"], int)


def test_endurance_short(models, tmp_path):
    _bench("endurance", ["--seconds", "4", "--models", str(models), "--out",
                         str(tmp_path)])
    fig = _result(tmp_path, "endurance")
    assert 3.5 < fig["seconds"] < 10 and fig["cpu_hog"] in (True, False)
    assert [m["minute"] for m in fig["per_minute"]] == [1] and fig["nonfinite_blocks"] == 0
    assert fig["mapper"]["ccs"] > 100 and fig["mapper"]["notes"] > 5  # the MIDI stream reached the mapper
    assert fig["underruns"] >= 0 and fig["model_rtf"] > 0
    # The UI ran as `neuralinst play` runs it, in its own process, and answered its link to the end.
    assert fig["ui"] == "InstrumentApp (own process)" and fig["ui_alive_to_the_end"] and fig["ui_requests"] > 20


def _bench(name, argv, timeout=120):
    """`neuralinst bench NAME ...` in a child process, as a user runs it, with its own private JACK server.

    Not the session's server: with another process's PortAudio client in the server (the fixture initialises
    PortAudio here), `jack_deactivate` of the benchmark's probe was seen to hang about one run in three. A child
    with a timeout also turns any hang into a failure instead of a stuck suite."""
    import subprocess
    import sys
    from pathlib import Path

    import os
    import signal

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONFAULTHANDLER="1")  # a SIGABRT makes the child print every thread's stack
    child = subprocess.Popen([sys.executable, "-m", "neuralinst", "bench", name, *argv], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGABRT)  # where it hangs, for the report
        try:
            out, err = child.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        pytest.fail(f"bench {name} did not finish in {timeout} s: {out[-2000:]}\n{err[-6000:]}")
    assert child.returncode == 0, out[-2000:] + err[-4000:]
    assert "wrote " in out


def test_cycle_counter_ignores_a_late_reading_and_follows_a_real_skip():
    from instrument.jack_midi import CycleCounter

    c = CycleCounter()
    assert c.next(1000, 128) == 1000
    assert c.next(1128, 128) == 1128
    assert c.next(1384, 128) == 1256  # one late callback reads the next cycle's frame: still its own cycle
    assert c.next(1384, 128) == 1384
    frame = 1384
    seen = []
    for _ in range(CycleCounter.HOLD + 2):  # the server really skipped a period: followed after HOLD callbacks
        frame += 128
        seen.append(c.next(frame + 128, 128))
    assert seen[0] == 1384 + 128 and seen[-1] == frame + 128
    assert c.next(frame, 128) == frame  # never ahead of the server


def test_rtf_times_the_native_vrnn_step_beside_the_graph(tmp_path):
    """`neuralinst bench rtf --weights native-int8` (short form): the native step is timed in the same rounds as
    the graph, with its per-call error against the float32 torch model."""
    from benchmarks.rtf import measure_config

    row = measure_config("vrnn-tiny", 0.2, 1, [1], tmp_path, ("native-int8",))
    native = row["weights"]["native-int8"]
    assert native["onnx_rtf"] > 0 and native["over_fp32"] > 0 and native["products"] > 0
    assert 0 < native["audio_rel_rms"] < 0.05 and 0 < native["state_rel_rms"] < 0.05
