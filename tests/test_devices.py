"""Listing audio outputs and MIDI inputs, choosing an output, and one clear sentence when there is no device."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from instrument.devices import list_midi_inputs, list_outputs, resolve_output
from instrument.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def test_lists_the_jack_output_and_a_jack_midi_source(jack_server):
    import rtmidi

    outputs = list_outputs()
    jack = [d for d in outputs if "JACK" in d["hostapi"]]
    assert jack and jack[0]["channels"] >= 2
    assert resolve_output("jack") == jack[0]["index"] == resolve_output(str(jack[0]["index"]))
    assert resolve_output("auto") in [d["index"] for d in outputs]
    assert resolve_output("none") is None
    with pytest.raises(UserError) as e:
        resolve_output("no such card")
    assert "no audio output matches" in str(e.value) and jack[0]["name"] in str(e.value)
    source = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="devtest")
    source.open_virtual_port("keys")
    try:
        assert any("keys" in name for name in list_midi_inputs())
        r = subprocess.run([sys.executable, "-m", "neuralinst", "devices", "--json"], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        listed = json.loads(r.stdout)
        assert any("JACK" in d["hostapi"] for d in listed["audio_outputs"])
        assert any("keys" in name for name in listed["midi_inputs"])
    finally:
        source.close_port()
        source.delete()


@pytest.mark.parametrize("command", [["devices"], ["play", "--model", "x.onnx", "--no-tui", "--seconds", "1"]])
def test_no_audio_server_is_one_sentence_that_says_how_to_start_one(command, tmp_path_factory):
    env = dict(os.environ, JACK_DEFAULT_SERVER="neuralinst-no-such-server", JACK_NO_START_SERVER="1")
    if command[0] == "play":
        from jackutil import tiny_model

        command[2] = str(tiny_model(tmp_path_factory, "vrnn-tiny"))
    r = subprocess.run([sys.executable, "-m", "neuralinst", *command], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=env)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "jackd -d dummy" in lines[0] and "--output none --record" in lines[0], r.stderr
