"""The test audio server is real: a JACK client sees it and a sounddevice stream runs through it."""
import time

import numpy as np


def test_sounddevice_plays_through_jack(jack_server):
    import sounddevice as sd

    apis = [a["name"] for a in sd.query_hostapis()]
    assert any("JACK" in a for a in apis), apis
    calls = []

    def callback(outdata, frames, t, status):
        outdata.fill(0.0)
        calls.append(frames)

    with sd.OutputStream(samplerate=jack_server.rate, blocksize=128, channels=2, callback=callback):
        time.sleep(0.5)
    assert len(calls) > 50 and set(calls) == {128}
