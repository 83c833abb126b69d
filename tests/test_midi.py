"""MIDI: the defensive parser, the mapping (soft takeover, sustain, learn, preset switching) and real JACK ports."""
import random
import time

import pytest

from instrument.errors import UserError
from instrument.mapping import CCBinding, Mapper, Mapping, ParameterBank
from instrument.jack_midi import JackMidiInput
from instrument.midi import FLOOD_LIMIT, MidiInput, MidiMessage, MidiParser, open_midi
from instrument.params import ParamSpec
from jackserver import wait_for
from jackutil import ControllerPort

SPECS = [ParamSpec("temperature", 0.0, 2.0, 1.0), ParamSpec("latent.0", -1.0, 1.0, 0.0),
         ParamSpec("volume", 0.0, 1.0, 0.8), ParamSpec("filter.cutoff", 40.0, 20000.0, 20000.0, "Hz", "log")]


# --- parser ------------------------------------------------------------------------------------------------------
def kinds(msgs):
    return [(m.kind, m.channel, m.a, m.b) for m in msgs]


def test_parser_running_status_velocity_zero_bend_and_realtime_inside_a_message():
    p = MidiParser()
    msgs = p.feed([0x91, 60, 100, 62, 0, 0xB0, 0xF8, 7, 99, 8, 1, 0xE2, 0x00, 0x40, 0xE2, 0x7F, 0x7F, 0xC3, 5])
    assert kinds(msgs) == [("note_on", 1, 60, 100), ("note_off", 1, 62, 0), ("clock", -1, 0, 0), ("cc", 0, 7, 99),
                           ("cc", 0, 8, 1), ("pitch_bend", 2, 8192, 0), ("pitch_bend", 2, 16383, 0),
                           ("program", 3, 5, 0)]
    assert p.stats.messages == 7 and p.stats.realtime == 1 and p.stats.malformed == 0


def test_parser_skips_and_counts_sysex_and_malformed_bytes():
    p = MidiParser()
    msgs = p.feed([0x05, 0x06] + [0xF0, 0x7E] + [1] * 10_000 + [0xF7] + [0x90, 60, 0xF4, 0x80, 60, 0]
                  + [0xF0, 1, 2, 0xB0, 1, 64] + [0xF7, 300, -1])
    assert kinds(msgs) == [("sysex", -1, 10_001, 0), ("note_off", 0, 60, 0), ("cc", 0, 1, 64)]
    assert len(msgs[0].data) == 256  # kept for display only, the rest counted
    # 2 stray data bytes, the note cut short by 0xF4, 0xF4 itself, the sysex cut by 0xB0, a lone 0xF7, 300, -1
    assert p.stats.malformed == 8 and p.stats.sysex == 1


def test_parser_survives_random_bytes_and_floods():
    rng = random.Random(1)
    p = MidiParser()
    data = [rng.randrange(256) for _ in range(200_000)]
    t0 = time.perf_counter()
    msgs = p.feed(data, t=0.0)
    assert time.perf_counter() - t0 < 5.0
    for m in msgs:
        assert 0 <= m.a <= 16383 and 0 <= m.b <= 127 and -1 <= m.channel <= 15
    assert p.stats.malformed > 1000 and p.stats.flood_dropped > 0
    assert sum(m.channel >= 0 for m in msgs) == FLOOD_LIMIT  # one second's worth of channel messages, no more
    assert kinds(p.feed([0xB0, 7, 1], t=2.0))[-1] == ("cc", 0, 7, 1)  # a new second: the flood guard lets go


# --- mapping -------------------------------------------------------------------------------------------------------
class Posted(list):
    def params(self, name):
        return [e.b for e in self if e.type == "param" and e.a == name]


def cc(number, value, channel=0):
    return MidiMessage("cc", channel, number, value, time.monotonic())


def make(mapping=None, switcher=None, values=None):
    posted = Posted()
    bank = ParameterBank(SPECS, posted.append, values)
    mapping = mapping or Mapping(cc=[CCBinding(21, "temperature"), CCBinding(70, "latent.0"),
                                     CCBinding(25, "filter.cutoff"), CCBinding(7, "volume", minimum=0.2, maximum=0.6)])
    return Mapper(mapping, bank, posted.append, switcher), bank, posted


def test_cc_moves_its_parameter_over_the_parameter_range_after_soft_takeover():
    mapper, bank, posted = make()
    mapper.handle(cc(21, 64))  # temperature is 1.0 = knob 63.5: close enough to take over at once
    assert bank.get("temperature") == pytest.approx(2 * 64 / 127)
    mapper.handle(cc(21, 127))
    assert posted.params("temperature")[-1] == 2.0
    mapper.handle(cc(25, 0))  # cutoff is at 20 kHz (knob at the top): the knob at 0 must not jump it
    assert bank.get("filter.cutoff") == 20000.0 and mapper.pickup("filter.cutoff") == 0.0
    mapper.handle(cc(25, 127))  # passes through the value: taken over
    mapper.handle(cc(25, 0))
    assert bank.get("filter.cutoff") == pytest.approx(40.0)
    mapper.handle(cc(7, 127))  # volume 0.8 is above this knob's 0.2..0.6 range: held until it crosses
    assert bank.get("volume") == 0.8
    bank.set("volume", 0.4)
    mapper.handle(cc(7, 64))
    assert bank.get("volume") == pytest.approx(0.2 + 0.4 * 64 / 127)


def test_soft_takeover_waits_for_the_knob_to_pass_the_value_again_after_the_ui_moved_it():
    mapper, bank, posted = make()
    mapper.handle(cc(70, 64))
    assert bank.get("latent.0") == pytest.approx(1 / 127)
    bank.set("latent.0", 0.5)  # the UI moves it: the knob at 64 no longer matches
    for v in (70, 80, 90):  # 0.5 is knob ~95: still below
        mapper.handle(cc(70, v))
    assert bank.get("latent.0") == 0.5 and mapper.stats.waiting == 3
    mapper.handle(cc(70, 100))  # crossed
    assert bank.get("latent.0") == pytest.approx(-1 + 2 * 100 / 127)
    no_takeover, bank2, _ = make(Mapping(cc=[CCBinding(70, "latent.0")], soft_takeover=False))
    no_takeover.handle(cc(70, 127))
    assert bank2.get("latent.0") == 1.0


def test_notes_channel_filter_sustain_pedal_bend_and_all_notes_off():
    mapper, _, posted = make(Mapping(channel=1, bend_range=7.0))
    on = lambda n, v=100, ch=1: MidiMessage("note_on", ch, n, v, 1.0)  # noqa: E731
    off = lambda n, ch=1: MidiMessage("note_off", ch, n, 0, 1.0)  # noqa: E731
    mapper.handle(on(60))
    mapper.handle(on(61, ch=0))  # other channel: ignored
    mapper.handle(cc(64, 127, channel=1))
    mapper.handle(off(60))  # held by the pedal
    assert [(e.type, e.a) for e in posted] == [("note_on", 60)] and posted[0].b == pytest.approx(100 / 127)
    mapper.handle(cc(64, 0, channel=1))
    assert [(e.type, e.a) for e in posted][-1] == ("note_off", 60)
    mapper.handle(MidiMessage("pitch_bend", 1, 0, 0, 1.0))
    mapper.handle(MidiMessage("pitch_bend", 1, 16383, 0, 1.0))
    assert [e.b for e in posted if e.type == "pitch_bend"] == [-1.0, pytest.approx(1.0, abs=1e-3)]
    assert [e.a for e in posted if e.type == "pitch_bend"] == [7.0, 7.0]  # the mapping's range travels with it
    mapper.handle(on(62))
    mapper.handle(on(64))
    mapper.handle(cc(123, 0, channel=1))
    assert [(e.type, e.a) for e in posted][-2:] == [("note_off", 62), ("note_off", 64)]


class Switches(list):
    def select_index(self, i):
        self.append(("index", i))

    def select_fraction(self, u):
        self.append(("fraction", u))


def test_program_change_switch_notes_and_switch_cc_select_presets():
    sw = Switches()
    mapper, _, posted = make(Mapping(switch_notes=(0, 11), switch_cc=30), sw)
    mapper.handle(MidiMessage("program", 0, 3, 0, 1.0))
    mapper.handle(MidiMessage("note_on", 0, 2, 90, 1.0))
    mapper.handle(MidiMessage("note_off", 0, 2, 0, 1.0))
    mapper.handle(cc(30, 127))
    assert sw == [("index", 3), ("index", 2), ("fraction", 1.0)] and posted == []
    off = Switches()
    make(Mapping(program_change=False), off)[0].handle(MidiMessage("program", 0, 3, 0, 1.0))
    assert off == []


def test_midi_learn_binds_the_next_cc_and_then_takes_over_softly():
    learned = []
    mapper, bank, _ = make()
    mapper.on_learned = learned.append
    mapper.learn("volume")
    mapper.handle(cc(99, 10))  # the learning move binds only
    assert learned == [CCBinding(99, "volume")] and mapper.learning is None and bank.get("volume") == 0.8
    assert mapper.mapping.cc_numbers("volume") == [7, 99]
    mapper.handle(cc(99, 120))  # passes 0.8 (knob 101.6): takes over
    assert bank.get("volume") == pytest.approx(120 / 127)


# --- real ports (JACK) --------------------------------------------------------------------------------------------
@pytest.fixture
def sender(jack_server):
    """make(name) -> a real JACK MIDI output port `name:out` (ControllerPort); make.unplug(out) removes it."""
    outs = []

    def make_sender(name="keys"):
        out = ControllerPort(name)
        outs.append(out)
        return out

    def unplug(out):
        outs.remove(out)
        out.delete()

    make_sender.unplug = unplug
    yield make_sender
    for out in outs:
        out.delete()


def send(out, *messages):
    """Send with a pause longer than a JACK period between messages (one message per cycle, as a player's hand
    would; python-rtmidi's JACK output, used here before, could hand the receiver the same bytes twice when two
    messages were queued within one period)."""
    for m in messages:
        out.send_message(m)
        time.sleep(0.01)


# Both inputs have the same face: JackMidiInput (JACK-Client, what `play` opens on JACK) and MidiInput (python-rtmidi,
# what it opens on ALSA, CoreMIDI or Windows MM; here through rtmidi's JACK API, with no engine running).
INPUTS = {"jack-client": JackMidiInput, "rtmidi": MidiInput}


@pytest.fixture(params=sorted(INPUTS))
def midi_input(request):
    return INPUTS[request.param]


def test_real_port_auto_connects_survives_vanishing_and_reconnects(jack_server, sender, midi_input):
    mapper, bank, posted = make()
    out = sender("keys")
    with midi_input(mapper.handle, name="ni-test", poll_interval=0.1) as midi:
        assert wait_for(lambda: ("keys:out", "connected") in midi.status())
        time.sleep(0.05)  # a connection carries data from the next JACK cycle on
        send(out, [0xB0, 21, 0], [0xB0, 21, 127])  # passes 1.0 on the way: soft takeover lets it through
        assert wait_for(lambda: bank.get("temperature") == 2.0), ([r[1:] for r in midi.recent], mapper.stats, mapper._takeover)
        sender.unplug(out)  # the controller is unplugged mid-performance
        assert wait_for(lambda: ("keys:out", "lost — waiting for it") in midi.status())
        out = sender("keys")  # and plugged back in
        assert wait_for(lambda: ("keys:out", "connected") in midi.status())
        time.sleep(0.05)
        send(out, [0x90, 60, 100])
        assert wait_for(lambda: [e.a for e in posted if e.type == "note_on"] == [60])
        assert midi.ports["keys:out"].lost == 1 and midi.errors == 0


def test_real_virtual_port_takes_a_jack_connection_and_a_random_byte_flood(jack_server, sender, midi_input):
    import jack

    mapper, bank, posted = make()
    flooder, patched = sender("flooder"), sender("patchbay")
    with midi_input(mapper.handle, name="ni-flood", select="flooder", poll_interval=0.1) as midi:
        assert wait_for(lambda: ("flooder:out", "connected") in midi.status())
        time.sleep(0.05)
        assert "patchbay:out" not in midi.ports  # --midi selects: only matching sources are auto-connected
        client = jack.Client("ni-patch", no_start_server=True)
        try:
            client.connect("patchbay:out", midi.virtual_port)  # patched by hand into our own virtual port
            time.sleep(0.05)  # a connection carries data from the next JACK cycle on
            send(patched, [0xB0, 70, 0], [0xB0, 70, 127])
            assert wait_for(lambda: bank.get("latent.0") == 1.0)
        finally:
            client.close()
        rng = random.Random(7)
        t0 = time.monotonic()
        for i in range(1000):  # 1,000 messages of random bytes in about a second
            flooder.send_message([rng.randrange(256) for _ in range(rng.randint(1, 3))])
            time.sleep(max(0.0, t0 + i / 1000 - time.monotonic()))
        time.sleep(0.05)
        send(flooder, [0xB0, 21, 0], [0xB0, 21, 127])  # soft takeover: the knob passes 1.0 after the flood
        assert wait_for(lambda: bank.get("temperature") == 2.0), (midi.stats, [r[1:] for r in midi.recent], bank.values, mapper._takeover)
        stats = midi.stats
        assert stats.malformed > 100 and stats.messages > 100 and midi.errors == 0, stats


def test_unknown_midi_port_is_one_sentence_listing_the_ports(jack_server, sender, midi_input):
    sender("korg")
    with pytest.raises(UserError, match=r"no MIDI input matches 'launchpad' \(available: .*'korg:out'"):
        midi_input(lambda m: None, name="ni-sel", select="launchpad").start()


# --- real ports into the real engine (JACK audio captured) --------------------------------------------------------
@pytest.fixture(scope="module")
def engine_presets(tmp_path_factory):
    from jackutil import export_tiny
    from tinymodels import tiny_wavegan

    root = tmp_path_factory.mktemp("midi-presets")
    tiny_wavegan(root / "keys" / "model.onnx", block=16384)
    (root / "keys" / "preset.toml").write_text('kind = "wavegan"\nmode = "oneshot"\n')
    (root / "vrnn").mkdir()
    export_tiny("vrnn-tiny", root / "vrnn")
    (root / "vrnn" / "preset.toml").write_text('model = "vrnn-tiny.onnx"\nkind = "vrnn"\nmode = "stream"\n'
                                               '[mapping]\nprograms = ["vrnn", "keys"]\n')
    return root


def test_midi_plays_the_engine_cc_notes_learn_and_program_change(jack_server, sender, engine_presets, tmp_path,
                                                               monkeypatch):
    import numpy as np

    from instrument.engine import Engine, EngineConfig
    from instrument.mapping import Performance
    from instrument.presets import load_preset
    from jackutil import JackCapture

    monkeypatch.setenv("NEURALINST_SHIPPED_PRESETS", str(engine_presets))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    preset = load_preset("vrnn")
    out = sender("controller")
    engine = Engine(EngineConfig(output="jack", block=128, ring_blocks=8)).start(preset)
    perf = Performance(engine, preset)
    try:
        cap = JackCapture(seconds=20).__enter__()
    except BaseException:
        engine.stop()
        perf.close()
        raise
    with cap:
        try:
            cap.connect()
            with open_midi(perf.mapper.handle, name="ni-engine", poll_interval=0.1) as midi:  # as `play` opens it
                assert isinstance(midi, JackMidiInput)
                assert engine.runs_on_jack_period(midi.period)  # so `play` schedules its notes on JACK frames
                engine.clock = midi.cycle_time
                assert wait_for(lambda: ("controller:out", "connected") in midi.status())
                time.sleep(0.05)
                # CC 21 (default bank) → the engine's temperature, after soft takeover passes 1.0
                send(out, [0xB0, 21, 0], [0xB0, 21, 100])
                assert wait_for(lambda: engine.get("temperature") == pytest.approx(2 * 100 / 127), 5)
                # MIDI learn: CC 99 → volume, saved to the user's copy of the preset
                perf.mapper.learn("volume")
                send(out, [0xB0, 99, 0], [0xB0, 99, 127])
                assert wait_for(lambda: engine.get("volume") == 1.0, 5)
                assert load_preset("vrnn").source == "user"
                assert load_preset("vrnn").mapping.cc_numbers("volume") == [7, 24, 99]
                # Program Change 1 → programs[1] = "keys": the engine crossfades to the WaveGAN one-shots
                before = engine.stats()
                send(out, [0xC0, 1])
                assert wait_for(lambda: perf.preset.name == "keys", 30), perf.switcher.error
                during = engine.stats()
                time.sleep(0.3)
                k_off = cap.frames
                time.sleep(0.5)
                k_on = cap.frames
                send(out, [0x90, 60, 120])  # a note-on: audible in the capture
                time.sleep(0.4)
                send(out, [0x80, 60, 0])
                time.sleep(0.6)
                after = engine.stats()
        finally:
            engine.stop()
            perf.close()
        audio = cap.audio()
    level = np.abs(audio).max(axis=1)
    assert level[:k_off].max() > 1e-3  # the VRNN stream was sounding before the switch
    assert level[k_off:k_on].max() < 1e-3  # the one-shot preset is silent until a key...
    assert level[k_on:k_on + 48000].max() > 0.05  # ...and the note sounds
    # The switch never starved the callback: any underrun in the window followed a JACK server xrun (the shared
    # machine's scheduler), which the engine counts apart.
    own = (during.underruns - before.underruns) - (during.server_underruns - before.server_underruns)
    assert own == 0, (before, during)


PINNED_CHILD = r"""
import sys, time
from instrument.engine import Engine, EngineConfig
from instrument.midi import MidiInput, open_midi
from instrument.presets import load_preset

which, n = sys.argv[1], int(sys.argv[2])
engine = Engine(EngineConfig(output="jack", block=128, ring_blocks=8)).start(load_preset("vrnn"))
opened, slowest = 0, 0.0
try:
    time.sleep(0.5)
    for i in range(n):
        t = time.monotonic()
        midi = (open_midi(lambda m: None, name="ni-pinned") if which == "play"
                else MidiInput(lambda m: None, name="ni-pinned", api="jack").start())
        midi.close()
        slowest = max(slowest, time.monotonic() - t)
        opened += 1
finally:
    engine.stop()
print(f"opened {opened} of {n}, slowest open+close {slowest:.3f} s")
"""


def test_opening_midi_beside_a_playing_engine_on_one_core_never_fails(jack_server, engine_presets, tmp_path):
    """The engine's audio callback is Python: a thread that calls libjack while holding the GIL (python-rtmidi
    does, for 10-25 ms per client open or close) keeps the JACK cycle from finishing, and the server finishes a
    client's open only at the end of the cycle. On one core that made every rtmidi open beside a playing engine
    fail ("JACK server not running?") after the server's client timeout. `open_midi` (what `play` calls) must
    open and close cleanly there, every time."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, NEURALINST_SHIPPED_PRESETS=str(engine_presets), XDG_CONFIG_HOME=str(tmp_path),
               PYTHONPATH=str(root))
    one_core = min(os.sched_getaffinity(0))
    done = subprocess.run([sys.executable, "-c", PINNED_CHILD, "play", "5"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120, preexec_fn=lambda: os.sched_setaffinity(0, {one_core}))
    assert done.returncode == 0 and "opened 5 of 5" in done.stdout, done.stdout[-1000:] + done.stderr[-3000:]


def test_without_a_jack_server_play_takes_midi_from_the_platform_api(jack_server, monkeypatch):
    from instrument.jack_midi import jack_server_running

    assert jack_server_running()  # the suite's server
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"nobody-runs-this-{id(monkeypatch)}")
    assert not jack_server_running()  # and the probe never starts one (JACK_NO_START_SERVER)
    try:
        midi = open_midi(lambda m: None, name="ni-native")
    except UserError as e:  # no ALSA on these machines: one sentence naming the API it tried
        assert "ALSA" in str(e) or "no MIDI system" in str(e)
    else:  # a machine with ALSA (or CoreMIDI / WinMM) opens it through python-rtmidi
        assert isinstance(midi, MidiInput)
        midi.close()
