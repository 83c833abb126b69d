"""Real-time scheduling of the producer (instrument/scheduling.py): the rule, the system calls on real threads, and
the instrument under a real-time JACK server, as on a stage, against one without real-time scheduling."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from instrument.scheduling import (PRODUCER_BELOW_AUDIO, PRODUCER_PRIORITY_ON, ThreadPolicy, current_policy,
                                   make_realtime, producer_priority)
from jackserver import JackServer
from jackutil import tiny_model

ROOT = Path(__file__).resolve().parent.parent


def _fifo_allowed() -> bool:
    """Whether this user may use SCHED_FIFO at all (root, CAP_SYS_NICE or an rtprio limit): asked of `chrt`."""
    return subprocess.run(["chrt", "-f", "10", "true"], capture_output=True).returncode == 0


needs_fifo = pytest.mark.skipif(not _fifo_allowed(), reason="this user may not use SCHED_FIFO (not root, no "
                                "CAP_SYS_NICE, no rtprio limit), so no real-time server or producer can be made")


def test_producer_follows_the_audio_thread():
    fifo70, ordinary = ThreadPolicy("SCHED_FIFO", 70, 0), ThreadPolicy("SCHED_OTHER", 0, -10)
    assert producer_priority("auto", fifo70) == 70 - PRODUCER_BELOW_AUDIO
    assert producer_priority("auto", ThreadPolicy("SCHED_RR", 5, 0)) == 1  # never below the lowest FIFO level
    assert producer_priority("auto", ordinary) is None  # a real-time producer could take an ordinary callback's core
    assert producer_priority("on", ordinary) == PRODUCER_PRIORITY_ON
    assert producer_priority("on", fifo70) == 70 - PRODUCER_BELOW_AUDIO
    assert producer_priority("off", fifo70) is None
    with pytest.raises(ValueError):
        producer_priority("always", fifo70)
    assert str(fifo70) == "FIFO 70" and str(ordinary) == "nice -10"


@needs_fifo
def test_make_realtime_changes_only_the_calling_thread():
    seen = {}

    def worker():
        seen["refused"] = make_realtime(7)
        seen["policy"] = current_policy()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["refused"] is None and seen["policy"] == ThreadPolicy("SCHED_FIFO", 7, seen["policy"].nice)
    assert not current_policy().realtime  # this (main) thread is untouched


def _play(server: str, model: Path, *extra: str) -> dict:
    env = dict(os.environ, JACK_DEFAULT_SERVER=server)
    r = subprocess.run([sys.executable, "-m", "neuralinst", "play", "--model", str(model), "--no-tui", "--seconds",
                        "1.5", "--output", "jack", *extra], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_fifo
def test_under_a_realtime_server_the_producer_runs_fifo_just_below_the_audio_thread(jack_server, tmp_path_factory):
    model = tiny_model(tmp_path_factory, "vrnn-tiny")
    # The session's server has no real-time scheduling: the audio thread is ordinary, so the producer only gets a
    # better nice level (auto), unless asked.
    plain = _play(jack_server.name, model)
    assert plain["audio_sched"].startswith("nice") and plain["producer_sched"].startswith("nice")
    forced = _play(jack_server.name, model, "--realtime", "on")
    assert forced["producer_sched"] == f"FIFO {PRODUCER_PRIORITY_ON}" and forced["realtime_refused"] is None
    rt = JackServer(f"{jack_server.name}-rt", realtime=True, portaudio=False).start()
    try:
        staged = _play(rt.name, model)
        off = _play(rt.name, model, "--realtime", "off")
    finally:
        rt.stop()
    kind, prio = staged["audio_sched"].split()
    assert kind == "FIFO" and int(prio) > PRODUCER_BELOW_AUDIO, staged  # libjack made PortAudio's thread real-time
    assert staged["producer_sched"] == f"FIFO {int(prio) - PRODUCER_BELOW_AUDIO}" and staged["realtime_refused"] is None
    assert staged["blocks"] > 300 and staged["peak"] > 0
    assert off["audio_sched"] == staged["audio_sched"] and off["producer_sched"].startswith("nice")


@needs_fifo
def test_the_thread_that_starts_the_engine_and_threads_it_starts_later_are_favoured(tmp_path_factory):
    """Every thread of the player shares the GIL with the audio callback, so none should be preempted by unrelated
    work while holding it: the driving thread (the UI's) and the threads it starts afterwards get DRIVER_NICE."""
    from instrument.engine import DRIVER_NICE, Engine, EngineConfig

    model = tiny_model(tmp_path_factory, "vrnn-tiny")
    seen = {}

    def drive():
        engine = Engine(EngineConfig(output="none")).start(str(model))
        try:
            seen["driver"] = current_policy().nice
            child = threading.Thread(target=lambda: seen.__setitem__("child", current_policy().nice))
            child.start()
            child.join()
            seen["stats"] = engine.stats()
        finally:
            engine.stop()

    t = threading.Thread(target=drive)
    t.start()
    t.join()
    assert seen["driver"] == DRIVER_NICE and seen["child"] == DRIVER_NICE
    # Without a real-time audio thread (the null sink's is an ordinary one) the producer stays ordinary (auto).
    assert seen["stats"].producer_sched.startswith("nice") and seen["stats"].realtime_refused is None
