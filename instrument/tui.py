"""The terminal UI (textual): what a performer sees and the computer keyboard as a controller.

It only reads cheap snapshots (`engine.stats()`, the parameter bank, MIDI activity) at a bounded rate (15 Hz) and
posts events; it never waits on the audio. Keys (F1 or ? shows them):

    piano      z s x d c v g b h n j m , l . ; /   (lower octave)    q 2 w 3 e r 5 t 6 y 7 u i 9 o 0 p (upper)
    - =        octave down / up                     space   all notes off
    up/down    select a parameter                   left/right (shift: coarse) change it
    ctrl+l     MIDI learn the selected parameter    esc     cancel learn
    [ ]        previous / next preset               ctrl+p  preset list (1-9 or enter)
    ctrl+r     record on/off                        ctrl+s  save the current state as a new preset
    ctrl+q     quit (asks first while recording)

A terminal reports key presses, not releases: a computer-keyboard note sounds for `GATE` seconds, longer while
the key auto-repeats.
"""
from __future__ import annotations

import gc
import math
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static

from instrument import events as ev
from instrument.errors import UserError
from instrument.mapping import Performance
from instrument.midi import note_name
from instrument.uiproc import UiHost, describe_model

REFRESH_HZ = 15
# Once the UI has drawn a few frames, everything it keeps (widgets, styles, render caches) goes out of the cycle
# collector's sight, as the engine's own objects did at start: a full collection over them held the GIL for
# 11-25 ms about every 40 s (measured with gc.callbacks), longer than the ring's 10.7 ms of cover, so each one
# was an underrun. Freezing only moves objects to the permanent generation (no scan, no pause).
# Then again and again: the render caches keep growing, and a full collection's pause grows with them (a 10-minute
# endurance run had its underruns in the last minutes). The price is that cyclic garbage already old at a freeze
# is never freed; textual's per-frame objects die young, by reference counting or in the younger generations.
FREEZE_HEAP_AFTER = 2.0  # seconds after mount
FREEZE_HEAP_EVERY = 30.0  # seconds
SLOW_PANELS_EVERY = 3  # the status line and the MIDI log repaint at REFRESH_HZ / 3
GATE = 0.45  # seconds a computer-keyboard note is held after its last (auto-repeated) press
LOWER_ROW = "zsxdcvgbhnjm,l.;/"
UPPER_ROW = "q2w3er5t6y7ui9o0p"
PIANO = {**{c: i for i, c in enumerate(LOWER_ROW)}, **{c: 12 + i for i, c in enumerate(UPPER_ROW)}}
BAR = 24  # characters of a parameter bar

HELP = __doc__.split("\n\n")[1]


def _bar(u: float, width: int = BAR, pickup: float | None = None) -> Text:
    u = min(max(u, 0.0), 1.0)
    filled = int(round(u * width))
    t = Text("█" * filled, style="bold cyan")
    t.append("░" * (width - filled), style="grey35")
    if pickup is not None:  # where the knob sits while it waits for soft takeover
        i = min(int(pickup * width), width - 1)
        t.stylize("bold yellow on grey15", i, i + 1)
    return t


def _db(x: float) -> float:
    return 20 * math.log10(x) if x > 1e-6 else -120.0


class Help(ModalScreen):
    def compose(self) -> ComposeResult:
        yield Static(Text(HELP + "\n\n(any key closes)"), id="help")

    def on_key(self, event: events.Key) -> None:
        event.stop()
        self.dismiss()


class ConfirmQuit(ModalScreen[bool]):
    def compose(self) -> ComposeResult:
        yield Static("Recording is running. Quit and finish the recording? [b]y[/b] / [b]n[/b]", id="confirm")

    def on_key(self, event: events.Key) -> None:
        event.stop()
        self.dismiss(event.key in ("y", "enter"))


class PresetList(ModalScreen[str | None]):
    def __init__(self, names: list[str], current: str):
        super().__init__()
        self.names, self.current = names, current

    def compose(self) -> ComposeResult:
        options = [f"{i + 1}  {n}{'  (playing)' if n == self.current else ''}" for i, n in enumerate(self.names)]
        yield Vertical(Static("Presets: number or enter to switch, esc to close"),
                       OptionList(*options, id="preset-options"), id="presets")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.names[event.option_index])

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape":
            event.stop()
            self.dismiss(None)
        elif event.character and event.character.isdigit() and event.character != "0":
            i = int(event.character) - 1
            event.stop()
            if i < len(self.names):
                self.dismiss(self.names[i])


class SaveAs(ModalScreen[str | None]):
    def __init__(self, suggestion: str):
        super().__init__()
        self.suggestion = suggestion

    def compose(self) -> ComposeResult:
        yield Vertical(Static("Save the current state as a new preset (enter saves, esc cancels):"),
                       Input(value=self.suggestion, id="save-name"), id="save")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape":
            event.stop()
            self.dismiss(None)


def backend_label(model) -> str:
    """What runs the model, in a few words: "native C loop", or "onnx CUDA" / "onnx CPU" (the first provider)."""
    return describe_model(SimpleNamespace(_program=SimpleNamespace(model=model)))["label"]


class InstrumentApp(App):
    CSS_PATH = "tui.tcss"
    ENABLE_COMMAND_PALETTE = False  # ctrl+p is the preset list here
    BINDINGS = [Binding("ctrl+q", "request_quit", "quit", priority=True),
                Binding("ctrl+c", "request_quit", "quit", priority=True, show=False)]

    def __init__(self, engine, performance: Performance, midi=None, record_dir: str | Path = ".",
                 output_name: str = ""):
        super().__init__()
        self.engine = engine
        self.performance = performance
        self.midi = midi
        self.record_dir = Path(record_dir)
        self.output_name = output_name
        self.octave = 4  # z = C4 (MIDI 60)
        self.gate = GATE
        self.selected = 0
        self.message = ""
        self.message_until = 0.0
        self.record_started: float | None = None
        self.recorded: list[Path] = []
        self.refreshes = 0
        self.peak_hold = 0.0
        self._gates: dict[int, object] = {}  # note -> timer that releases it
        self._pressed_at: dict[int, float] = {}
        self._latent_axes = (0, 1)
        self._last_learning: str | None = None
        self._shown: dict[str, Text] = {}
        # In its own process (instrument/uiproc.py) the engine is a stand-in that says what model it plays.
        self._model_info = getattr(engine, "model_info", None) or (lambda: describe_model(engine))
        performance.listeners.append(self._on_switched)

    # --- layout --------------------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Horizontal(id="body"):
            yield Static(id="params")
            with Vertical(id="side"):
                yield Static(id="meter")
                yield Static(id="latent")
                yield Static(id="midi")
        yield Static(id="message")
        yield Static(Text("F1/? help  z-row/q-row piano  -/= octave  ↑↓ select  ←→ change  ctrl+l learn  "
                          "[ ] preset  ctrl+p list  ctrl+r rec  ctrl+s save  ctrl+q quit", style="grey62"),
                     id="keys")

    def on_mount(self) -> None:
        self.title = "neuralinst"
        self._widgets = {w: self.query_one(f"#{w}", Static) for w in ("status", "params", "meter", "latent", "midi",
                                                                      "message")}
        self.refresh_view()
        self.set_interval(1 / REFRESH_HZ, self.refresh_view)
        self.set_timer(FREEZE_HEAP_AFTER, self._freeze_heap)
        self.set_interval(FREEZE_HEAP_EVERY, self._freeze_heap)

    def _freeze_heap(self) -> None:
        gc.freeze()  # (a method: textual's timers cannot call a builtin function)

    # --- the view (15 Hz; the status line and the MIDI log 5 Hz) -----------------------------------------------
    def refresh_view(self) -> None:
        self.refreshes += 1
        s = self.engine.stats()
        self._show("params", self._params_view())
        self._show("meter", self._meter_view(s))
        self._show("latent", self._latent_view())
        # The figures and the MIDI log change every tick but are read, not watched: repainting them at a third of
        # the rate gives two thirds of their GIL time back to the audio callback.
        if (self.refreshes - 1) % SLOW_PANELS_EVERY == 0:
            self._show("status", self._status_view(s))
            self._show("midi", self._midi_view())
        self._watch_learning()
        self._show("message", self._message_view())

    def _status_view(self, s) -> Text:
        p = self.performance.preset
        sw = self.performance.switcher
        head = Text()
        head.append(f" {p.name} ", style="bold black on cyan")
        head.append(f"  {p.kind} · {p.mode}")
        if sw.switching:
            head.append(f"  → loading {sw.switching}…", style="bold yellow")
        model = self._model_info()
        head.append(f"   out {self.output_name or self.engine.config.output} {s.samplerate} Hz"
                    + (f" · model {model['sample_rate']} Hz" if model["sample_rate"] else "") + f" · block {s.block}")
        head.append(f"   {model['label']}" if model["label"] else "", style="dim")
        if s.producer_sched:  # real-time or not decides whether a busy machine can starve the ring
            realtime = "FIFO" in s.producer_sched or "RR" in s.producer_sched
            head.append(f" · {s.producer_sched}/{s.audio_sched or '?'}", style="dim" if realtime else "yellow")
        head.append("\n")
        head.append(f" latency {s.latency_ms:.1f} ms (note {s.note_latency_ms:.1f})  ")
        head.append(f"ring {round(s.ring_fill * 4) * 25:3d}%  ")
        head.append(f"underruns {s.underruns} xruns {s.xruns}  ",
                    style="bold red" if (s.underruns or s.xruns) else "")
        if s.nonfinite_blocks:  # repaired before they were heard, but something upstream is misbehaving
            head.append(f"NaN blocks {s.nonfinite_blocks}  ", style="bold red")
        rtf_style = "bold red" if 0 < s.model_rtf < 1.0 else "green"
        head.append(f"model ×{s.model_rtf:.3g} RT", style=rtf_style)
        head.append(f"  CPU {s.cpu_share * 100:.0f}%  voices {s.voices}  oct {self.octave}")
        if s.recording:
            elapsed = time.monotonic() - (self.record_started or time.monotonic())
            head.append(f"   ● REC {int(elapsed) // 60:02d}:{elapsed % 60:04.1f}  {Path(s.recording).name}",
                        style="bold white on red")
        return head

    def _message_view(self) -> Text:
        sw = self.performance.switcher
        msg = Text()
        note = self._model_info()["note"]
        if note:  # why the model runs as a graph when a faster loop exists (e.g. the native SampleRNN)
            msg.append(note + "  ", style="yellow")
        if sw.error:
            msg.append(sw.error + "  ", style="bold red")
        if self.performance.save_error:
            msg.append(self.performance.save_error + "  ", style="bold red")
        if self.message and time.monotonic() < self.message_until:
            msg.append(self.message, style="bold yellow")
        return msg

    def _show(self, widget_id: str, text: Text) -> None:
        """Update a panel only when its text changed: every update costs a render, and the UI shares the
        interpreter (and its GIL) with the audio callback."""
        old = self._shown.get(widget_id)
        if old != text:
            self._shown[widget_id] = text
            # A layout pass reflows and repaints the whole screen (measured with py-spy: most of the UI's GIL
            # time); the panels keep their size unless their line count changes, so most updates skip it.
            lines = text.plain.count("\n")
            self._widgets[widget_id].update(text, layout=old is None or old.plain.count("\n") != lines)

    def _params_view(self) -> Text:
        bank, mapper = self.performance.bank, self.performance.mapper
        t = Text("Parameters  (CC: knob)\n", style="bold")
        for i, name in enumerate(bank.names):
            sel = i == self.selected
            ccs = ",".join(str(c) for c in mapper.mapping.cc_numbers(name)) or "—"
            learning = mapper.learning == name
            t.append("▸ " if sel else "  ", style="bold yellow")
            t.append(f"{name:<18}", style="bold" if sel else "")
            t.append(f"{('LEARN' if learning else 'CC ' + ccs):<9}", style="bold black on yellow" if learning
                     else "grey62")
            t.append_text(_bar(bank.unit(name), pickup=mapper.pickup(name)))
            spec = bank.specs[name]
            v = bank.get(name)
            t.append(f" {v:8.1f} {spec.unit}\n" if abs(v) >= 100 else f" {v:8.3f} {spec.unit}\n")
        return t

    def _meter_view(self, s) -> Text:
        level = float(getattr(s, "level", 0.0))
        self.peak_hold = max(level, self.peak_hold * 0.9)
        db = _db(level)
        u = min(max((db + 60) / 60, 0.0), 1.0)
        width = 30
        filled = int(round(u * width))
        hold = min(int(min(max((_db(self.peak_hold) + 60) / 60, 0.0), 1.0) * width), width - 1)
        t = Text("Level\n", style="bold")
        bar = Text()
        for i in range(width):
            style = "green" if i < 0.7 * width else "yellow" if i < 0.9 * width else "red"
            bar.append("█" if i < filled else ("│" if i == hold else "·"), style=style if i < filled or i == hold
                       else "grey35")
        t.append_text(bar)
        t.append(f" {db:6.1f} dBFS" if db > -120 else "   -inf dBFS")
        if s.peak >= 0.999:
            t.append("  CLIP", style="bold white on red")
        return t

    def _latent_view(self) -> Text:
        bank = self.performance.bank
        name = bank.names[self.selected] if bank.names else ""
        if name.startswith("latent."):
            i = int(name.split(".")[1])
            j = (i + 1) % 8 if f"latent.{(i + 1) % 8}" in bank else 0
            self._latent_axes = (i, j)
        i, j = self._latent_axes
        xa, ya = f"latent.{i}", f"latent.{j}"
        t = Text(f"Latent  x = {xa}  y = {ya}", style="bold")
        if xa not in bank or ya not in bank:
            t.append("\n  (this model has no latent knobs)")
            return t
        if "morph" in bank:
            t.append(f"  morph {bank.get('morph'):.2f}")
        w, h = 25, 7
        x = int(round(bank.unit(xa) * (w - 1)))
        y = int(round((1 - bank.unit(ya)) * (h - 1)))
        for row in range(h):
            line = Text("\n  ")
            for col in range(w):
                if (col, row) == (x, y):
                    line.append("●", style="bold magenta")
                elif col == w // 2 or row == h // 2:
                    line.append("┼" if (col == w // 2 and row == h // 2) else "·", style="grey42")
                else:
                    line.append(" ")
            t.append_text(line)
        return t

    def _midi_view(self) -> Text:
        t = Text("MIDI\n", style="bold")
        if self.midi is None:
            t.append("  no MIDI input open (computer keyboard only)\n", style="grey62")
            return t
        for port, state in self.midi.status():
            style = "green" if state in ("connected", "listening") else "bold red"
            t.append(f"  {port}: {state}\n", style=style)
        st = self.midi.stats
        if st.malformed or st.flood_dropped or st.sysex:
            t.append(f"  malformed {st.malformed}  sysex {st.sysex}  flood-dropped {st.flood_dropped}\n",
                     style="yellow")
        now, wall = time.monotonic(), time.time()
        for when, port, text in list(self.midi.recent)[-6:]:
            stamp = datetime.fromtimestamp(wall - (now - when)).strftime("%H:%M:%S")
            t.append(f"  {stamp}  {text}\n", style="" if now - when < 2 else "grey62")
        return t

    def _watch_learning(self) -> None:
        mapper = self.performance.mapper
        if self._last_learning and mapper.learning is None:
            ccs = mapper.mapping.cc_numbers(self._last_learning)
            where = self.performance.saved_to
            self.say(f"learned: CC {ccs[-1] if ccs else '?'} → {self._last_learning}"
                     + (f" (saved to {where})" if where else ""))
        self._last_learning = mapper.learning

    def say(self, text: str, seconds: float = 4.0) -> None:
        self.message, self.message_until = text, time.monotonic() + seconds

    # --- keys ----------------------------------------------------------------------------------------------------
    def on_key(self, event: events.Key) -> None:
        key, char = event.key, event.character
        bank, perf = self.performance.bank, self.performance
        handled = True
        if char and len(char) == 1 and char in PIANO and not event.key.startswith("ctrl+"):
            self.play_key(12 * (self.octave + 1) + PIANO[char])
        elif char == "-":
            self.octave = max(0, self.octave - 1)
        elif char == "=":
            self.octave = min(8, self.octave + 1)
        elif key == "up":
            self.selected = (self.selected - 1) % max(1, len(bank.names))
        elif key == "down":
            self.selected = (self.selected + 1) % max(1, len(bank.names))
        elif key in ("left", "right", "shift+left", "shift+right"):
            if bank.names:
                steps = (8 if key.startswith("shift") else 1) * (1 if key.endswith("right") else -1)
                bank.nudge(bank.names[self.selected], steps)
        elif key == "ctrl+l":
            if bank.names:
                name = bank.names[self.selected]
                perf.mapper.learn(name)
                self.say(f"MIDI learn: move a knob to bind it to {name} (esc cancels)", 30)
        elif key == "escape":
            if perf.mapper.learning:
                perf.mapper.cancel_learn()
                self.say("learn cancelled")
        elif char == "[":
            perf.switcher.step(-1)
        elif char == "]":
            perf.switcher.step(+1)
        elif key == "ctrl+p":
            self.push_screen(PresetList(perf.switcher.names(), perf.preset.name), self._chosen)
        elif key == "ctrl+r":
            self.toggle_recording()
        elif key == "ctrl+s":
            self.push_screen(SaveAs(self._suggest_name()), self._save)
        elif key in ("f1", "question_mark") or char == "?":
            self.push_screen(Help())
        elif char == " ":
            perf.mapper.all_notes_off()
            for note in list(self._gates):
                self._release(note)
        else:
            handled = False
        if handled:
            event.stop()
            event.prevent_default()
            self.refresh_view()

    def play_key(self, note: int) -> None:
        if not 0 <= note <= 127:
            return
        now = time.monotonic()
        timer = self._gates.pop(note, None)
        repeat = timer is not None and now - self._pressed_at.get(note, 0.0) < 0.6
        if timer is not None:
            timer.stop()
        if not repeat:  # a fresh press (auto-repeat only extends the note)
            if timer is not None:
                self.engine.post(ev.note_off(note))
            self.engine.post(ev.note_on(note, 0.8))
            self.say(f"key {note_name(note)}", 1.0)
        self._pressed_at[note] = now
        self._gates[note] = self.set_timer(self.gate, lambda: self._release(note))

    def _release(self, note: int) -> None:
        timer = self._gates.pop(note, None)
        if timer is not None:
            timer.stop()
            self.engine.post(ev.note_off(note))

    def _chosen(self, name: str | None) -> None:
        if name:
            self.performance.switcher.select_name(name)
            self.say(f"switching to {name}…")

    def _suggest_name(self) -> str:
        return f"{self.performance.preset.name}-{datetime.now():%m%d-%H%M}"

    def _save(self, name: str | None) -> None:
        if not name:
            return
        try:
            path = self.performance.save_as(name)
            self.say(f"saved preset {name!r} to {path}")
        except UserError as e:
            self.say(str(e))

    def _on_switched(self, preset) -> None:  # called on the switcher's thread
        self.selected = min(self.selected, max(0, len(self.performance.bank.names) - 1))
        self.call_from_thread(self.say, f"now playing {preset.name}")

    # --- recording, quitting -------------------------------------------------------------------------------------
    def toggle_recording(self) -> None:
        if self.engine.stats().recording:
            path = self.engine.stop_recording()
            self.record_started = None
            if path:
                self.recorded.append(Path(path))
            self.say(f"recording saved: {path}")
        else:
            name = f"neuralinst-{self.performance.preset.name}-{datetime.now():%Y%m%d-%H%M%S}.wav"
            try:
                path = self.engine.start_recording(self.record_dir / name)
            except (UserError, OSError) as e:
                self.say(f"cannot record: {e}")
                return
            self.record_started = time.monotonic()
            self.say(f"recording to {path}")

    def action_request_quit(self) -> None:
        if self.engine.stats().recording:
            self.push_screen(ConfirmQuit(), self._confirmed)
        else:
            self.exit(0)

    def _confirmed(self, yes: bool | None) -> None:
        if yes:
            path = self.engine.stop_recording()
            if path:
                self.recorded.append(Path(path))
            self.exit(0)


def run(engine, preset, args) -> int:
    """`neuralinst play` with the UI: the engine is running; open MIDI, build the performance, run the app in its
    own process (instrument/uiproc.py: textual's drawing must not hold the audio callback's GIL). `--ui inprocess`
    runs it in this interpreter instead, as before (for comparison)."""
    performance = Performance(engine, preset)
    midi = None
    select = getattr(args, "midi", None)
    try:
        from instrument.jack_midi import JackMidiInput
        from instrument.midi import open_midi

        midi = open_midi(performance.mapper.handle, name=getattr(args, "midi_name", None) or "neuralinst",
                         select=select, api=getattr(args, "midi_api", None))
        if isinstance(midi, JackMidiInput) and engine.runs_on_jack_period(midi.period):
            engine.clock = midi.cycle_time  # JACK MIDI events land on their frame, one block later
    except UserError:
        if select is not None:  # the performer asked for a port: say it is not there
            performance.close()
            raise
        midi = None  # no MIDI system at all: the computer keyboard still plays
    record_dir = getattr(args, "record_dir", None) or "."
    output_name = str(getattr(args, "output", ""))
    try:
        if getattr(args, "ui", "process") == "inprocess":
            app = InstrumentApp(engine, performance, midi, record_dir=record_dir, output_name=output_name)
            app.run()
            code, recorded = int(app.return_code or 0), app.recorded
        else:
            code, recorded = _run_in_process(engine, performance, midi, record_dir, output_name)
    finally:
        if midi is not None:
            midi.close()
        performance.close()
    for path in recorded:
        print(f"recorded {path}")
    if code not in (0, None):
        raise UserError(f"the terminal UI stopped unexpectedly (exit code {code}); the engine was stopped"
                        + (" and the recording kept." if recorded else "."))
    return 0


def _run_in_process(engine, performance, midi, record_dir, output_name) -> tuple[int | None, list[Path]]:
    """The UI as a child process; this (the engine's) process answers it until it exits, or until a SIGTERM or
    SIGHUP (a closed terminal) ends the session with the recording kept."""
    import signal

    ended = {"by": None}

    def end(signum, _frame):
        ended["by"] = signum

    host = UiHost(engine, performance, midi, record_dir=record_dir, output_name=output_name)
    previous = {sig: signal.signal(sig, end) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        host.start()
        while host.wait(0.2) is None and ended["by"] is None:
            pass
    finally:
        host.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return (0 if ended["by"] is not None else host.exitcode), host.recorded


def make_app(engine, preset=None, performance: Performance | None = None, midi=None, **kwargs) -> InstrumentApp:
    """The app as `run` builds it, for tests and benchmarks that drive it headless (`app.run_test()`)."""
    performance = performance or Performance(engine, preset)
    return InstrumentApp(engine, performance, midi, **kwargs)
