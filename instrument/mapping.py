"""How a MIDI controller plays the instrument: the per-preset mapping and the live translator.

Two halves:

- `Mapping` (plain data, read from and written to a preset's `[mapping]` table): CC → performer parameter, which
  channel plays notes, pitch-bend range, and how Program Change / a note range / a CC switch presets.
- `ParameterBank` + `Mapper` (live): the bank holds every performer parameter's target value and posts changes
  to the engine; the mapper turns parsed MIDI messages into engine Events, with soft takeover (a knob whose
  position differs from the parameter's value takes over only once it passes through it), a sustain pedal, and
  MIDI learn (arm a parameter, move a knob: bound).

Performer parameter names are the engine's (docs/DESIGN.md §4): `temperature`, `grain`, `latent.0` … `latent.N`,
`morph`, `drift`, `volume`, `filter.cutoff`, `delay.send`, `reverb.send`, `fx.<name>.bypass`.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from instrument.errors import UserError

PARAMETERS = ("temperature", "morph", "drift", "volume", "filter.cutoff", "delay.send", "reverb.send", "grain")
LATENT_KNOBS = 8  # latent.0 … latent.7 are always mapped; a preset may name more (latent.N)
_PARAM_PATTERNS = (re.compile(r"latent\.(\d+)"), re.compile(r"fx\.[a-z][a-z0-9_]*\.bypass"))
MAX_CC = 119  # 120–127 are channel-mode messages (all sound off, reset, all notes off…), never knobs
SUSTAIN_CC = 64
ALL_SOUND_OFF_CC = 120
ALL_NOTES_OFF_CC = 123


def is_parameter_name(name: str) -> bool:
    return name in PARAMETERS or any(p.fullmatch(name) for p in _PARAM_PATTERNS)


@dataclass
class CCBinding:
    """One knob: CC `cc` (on `channel`, None = any) moves `param` over [minimum, maximum] (None = its own range)."""

    cc: int
    param: str
    channel: int | None = None
    minimum: float | None = None
    maximum: float | None = None


def default_cc() -> list[CCBinding]:
    """Fits the common 8-knob controllers: CC 70–77 (Akai MPK, many Arturias) play the latent knobs, CC 21–28
    (Novation Launchkey and friends' default bank) the performance parameters, plus mod wheel and channel volume."""
    out = [CCBinding(70 + i, f"latent.{i}") for i in range(LATENT_KNOBS)]
    perf = ("temperature", "morph", "drift", "volume", "filter.cutoff", "delay.send", "reverb.send", "grain")
    out += [CCBinding(21 + i, p) for i, p in enumerate(perf)]
    out += [CCBinding(1, "morph"), CCBinding(7, "volume")]
    return out


@dataclass
class Mapping:
    cc: list[CCBinding] = field(default_factory=default_cc)
    channel: int | None = None  # the channel notes and pitch bend are taken from (0–15); None = every channel
    bend_range: float = 2.0  # semitones for a full pitch-bend throw
    soft_takeover: bool = True
    program_change: bool = True  # Program Change n selects programs[n] (or the n-th listed preset)
    programs: list[str] = field(default_factory=list)
    switch_notes: tuple[int, int] | None = None  # notes lo..hi select presets instead of playing (lo = preset 0)
    switch_cc: int | None = None  # a CC whose value (0–127) selects a preset

    def bindings_for(self, param: str) -> list[CCBinding]:
        return [b for b in self.cc if b.param == param]

    def cc_numbers(self, param: str) -> list[int]:
        return [b.cc for b in self.cc if b.param == param]

    def bind(self, cc: int, param: str, channel: int | None = None) -> CCBinding:
        """Bind `cc` to `param` (MIDI learn); other CCs on `param` stay."""
        # One binding per CC number (the TOML table is keyed by it): learning replaces what the CC moved before.
        binding = CCBinding(cc, param, channel)
        self.cc = sorted([b for b in self.cc if b.cc != cc] + [binding], key=lambda b: b.cc)
        return binding

    # --- TOML form (the preset's [mapping] table) ------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> "Mapping":
        """Parse a preset's [mapping] table; `where` names the file for the one-line error."""
        known = {"cc", "channel", "bend_range", "soft_takeover", "program_change", "programs", "switch_notes",
                 "switch_cc", "replace_defaults"}
        for key in raw:
            if key not in known:
                raise UserError(f"{where}: unknown key mapping.{key} (expected one of {', '.join(sorted(known))}).")
        m = cls()
        if not _get(raw, "replace_defaults", bool, where, "mapping.replace_defaults", False) and "cc" in raw:
            base = {b.cc: b for b in m.cc}
        else:
            base = {} if "cc" in raw else {b.cc: b for b in m.cc}
        cc_table = raw.get("cc", {})
        if not isinstance(cc_table, dict):
            raise UserError(f"{where}: mapping.cc must be a table of CC number = \"parameter\".")
        for key, value in cc_table.items():
            fld = f"mapping.cc.{key}"
            try:
                number = int(key)
            except ValueError:
                raise UserError(f"{where}: {fld}: the key must be a CC number (0–{MAX_CC}).") from None
            _check_cc(number, where, fld)
            if isinstance(value, str):
                binding = CCBinding(number, value)
            elif isinstance(value, dict):
                extra = set(value) - {"param", "channel", "min", "max"}
                if extra:
                    raise UserError(f"{where}: {fld}: unknown key {sorted(extra)[0]!r} (param, channel, min, max).")
                if not isinstance(value.get("param"), str):
                    raise UserError(f"{where}: {fld}.param must name a parameter.")
                binding = CCBinding(number, value["param"], _channel(value.get("channel"), where, fld + ".channel"),
                                    _num(value.get("min"), where, fld + ".min"),
                                    _num(value.get("max"), where, fld + ".max"))
            else:
                raise UserError(f"{where}: {fld} must be a parameter name or a table {{ param = ..., min = ..., max = ... }}.")
            if not is_parameter_name(binding.param):
                raise UserError(f"{where}: {fld}: unknown parameter {binding.param!r}.")
            base[number] = binding
        m.cc = sorted(base.values(), key=lambda b: b.cc)
        m.channel = _channel(raw.get("channel"), where, "mapping.channel")
        m.bend_range = float(_get(raw, "bend_range", (int, float), where, "mapping.bend_range", 2.0))
        if not 0 <= m.bend_range <= 48:
            raise UserError(f"{where}: mapping.bend_range {m.bend_range} is out of range (0–48 semitones).")
        m.soft_takeover = _get(raw, "soft_takeover", bool, where, "mapping.soft_takeover", True)
        m.program_change = _get(raw, "program_change", bool, where, "mapping.program_change", True)
        programs = _get(raw, "programs", list, where, "mapping.programs", [])
        if not all(isinstance(p, str) and p for p in programs) or len(programs) > 128:
            raise UserError(f"{where}: mapping.programs must be a list of up to 128 preset names.")
        m.programs = list(programs)
        notes = raw.get("switch_notes")
        if notes is not None:
            if not (isinstance(notes, list) and len(notes) == 2 and all(isinstance(n, int) for n in notes)
                    and 0 <= notes[0] <= notes[1] <= 127):
                raise UserError(f"{where}: mapping.switch_notes must be [lowest, highest] notes within 0–127.")
            m.switch_notes = (notes[0], notes[1])
        sw = raw.get("switch_cc")
        if sw is not None:
            if not isinstance(sw, int) or isinstance(sw, bool):
                raise UserError(f"{where}: mapping.switch_cc must be a CC number.")
            _check_cc(sw, where, "mapping.switch_cc")
            m.switch_cc = sw
        return m

    def to_dict(self) -> dict[str, Any]:
        """The [mapping] table, complete (replace_defaults = true) so that saving and loading round-trips."""
        cc: dict[str, Any] = {}
        for b in sorted(self.cc, key=lambda b: b.cc):
            if b.channel is None and b.minimum is None and b.maximum is None:
                cc[str(b.cc)] = b.param
            else:
                entry: dict[str, Any] = {"param": b.param}
                if b.channel is not None:
                    entry["channel"] = b.channel
                if b.minimum is not None:
                    entry["min"] = b.minimum
                if b.maximum is not None:
                    entry["max"] = b.maximum
                cc[str(b.cc)] = entry
        out: dict[str, Any] = {"replace_defaults": True, "bend_range": self.bend_range,
                               "soft_takeover": self.soft_takeover, "program_change": self.program_change}
        if self.channel is not None:
            out["channel"] = self.channel
        if self.programs:
            out["programs"] = list(self.programs)
        if self.switch_notes is not None:
            out["switch_notes"] = list(self.switch_notes)
        if self.switch_cc is not None:
            out["switch_cc"] = self.switch_cc
        out["cc"] = cc
        return out


def _check_cc(number: int, where: str, fld: str) -> None:
    if not 0 <= number <= MAX_CC:
        raise UserError(f"{where}: {fld}: CC number {number} is out of range (0–{MAX_CC}; 120–127 are channel-mode "
                        f"messages).")


def _channel(value: Any, where: str, fld: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 15:
        raise UserError(f"{where}: {fld} must be a MIDI channel 0–15 (0 is the channel devices call 1).")
    return value


def _num(value: Any, where: str, fld: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UserError(f"{where}: {fld} must be a number.")
    return float(value)


def _get(raw: dict, key: str, kind, where: str, fld: str, default):
    if key not in raw:
        return default
    value = raw[key]
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise UserError(f"{where}: {fld} has the wrong type (got a boolean).")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"{where}: {fld} must be a {names}, not {type(value).__name__}.")
    return value


# --- live: parameter values, MIDI → events ----------------------------------------------------------------------
class ParameterBank:
    """The performer parameters' target values, shared by MIDI, the UI and the engine (via posted events).

    Every change goes through `set`, which clamps, posts a `param` Event and bumps the parameter's version, so
    soft takeover can tell when a value moved under a knob. Plain dict writes: atomic under the GIL, lock-free.
    """

    def __init__(self, specs: Iterable, post: Callable, values: dict[str, float] | None = None):
        self._post = post
        self.replace(specs, values)

    def replace(self, specs: Iterable, values: dict[str, float] | None = None) -> None:
        """New parameters (after a preset switch): values from `values`, else each spec's default."""
        specs = list(specs)
        self.specs = {s.name: s for s in specs}
        self.names = [s.name for s in specs]
        values = values or {}
        self.values = {s.name: s.clamp(values.get(s.name, s.default)) for s in specs}
        self.versions = {s.name: getattr(self, "versions", {}).get(s.name, 0) + 1 for s in specs}

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def get(self, name: str) -> float:
        return self.values[name]

    def set(self, name: str, value: float, t: float | None = None) -> float | None:
        spec = self.specs.get(name)
        if spec is None:
            return None  # a mapping may name a parameter this model lacks (e.g. temperature on WaveGAN)
        v = spec.clamp(value)
        self.values[name] = v
        self.versions[name] += 1
        self._post(_events().param(name, v, t))
        return v

    def unit(self, name: str) -> float:
        """The value as a controller position 0..1."""
        return self.specs[name].to_unit(self.values[name])

    def set_unit(self, name: str, u: float, t: float | None = None) -> float | None:
        spec = self.specs.get(name)
        return None if spec is None else self.set(name, spec.from_unit(u), t)

    def nudge(self, name: str, steps: float, per_step: float = 1 / 64) -> float | None:
        """Move by `steps` keyboard steps (1/64 of the range each)."""
        if name not in self.specs:
            return None
        return self.set_unit(name, min(max(self.unit(name) + steps * per_step, 0.0), 1.0))

    def post_all(self) -> None:
        for name in self.names:
            self._post(_events().param(name, self.values[name]))


def _events():
    from instrument import events  # the engine's module; imported late so the mapping data half stays light

    return events


@dataclass
class _Takeover:
    last_u: float | None = None  # the knob's last position (0..1 in the binding's range)
    version: int = -1  # the parameter's version when this knob last set it; anything else = someone else moved it


@dataclass
class MapperStats:
    notes: int = 0
    ccs: int = 0
    unmapped: int = 0  # CCs that move nothing
    waiting: int = 0  # CC moves ignored until the knob passes the parameter's value (soft takeover)
    programs: int = 0
    bends: int = 0
    ignored: int = 0  # other channels, aftertouch, system messages


class Mapper:
    """Turns parsed MIDI messages (instrument.midi.MidiMessage) into engine Events through a `Mapping`.

    `switcher` (optional) receives preset requests: `select_index(n)` for Program Change / switch notes and
    `select_fraction(u)` for the switch CC. `on_learned(binding)` is called after MIDI learn binds a CC.
    Called from MIDI threads; every path is a few dict operations and one lock-free post.
    """

    TAKEOVER_TOLERANCE = 1.5 / 127  # within a CC step and a half counts as "at the value"

    def __init__(self, mapping: Mapping, bank: ParameterBank, post: Callable, switcher=None,
                 on_learned: Callable[[CCBinding], None] | None = None):
        self.mapping = mapping
        self.bank = bank
        self._post = post
        self.switcher = switcher
        self.on_learned = on_learned
        self.learning: str | None = None
        self.stats = MapperStats()
        self._takeover: dict[int, _Takeover] = {}
        self._held: set[int] = set()  # notes sounding (key down or sustained)
        self._sustained: set[int] = set()  # notes released while the pedal is down
        self._pedal = False
        self.last_cc: tuple[int, int] | None = None  # (cc, value) for the UI

    # --- MIDI learn ----------------------------------------------------------------------------------------------
    def learn(self, param: str) -> None:
        """Arm learn: the next CC moved is bound to `param`."""
        self.learning = param

    def cancel_learn(self) -> None:
        self.learning = None

    def set_mapping(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self._takeover.clear()

    def pickup(self, param: str) -> float | None:
        """Where a knob bound to `param` sits (0..1) while it waits to take over, or None."""
        for b in self.mapping.bindings_for(param):
            t = self._takeover.get(b.cc)
            if t and t.last_u is not None and t.version != self.bank.versions.get(param):
                return t.last_u
        return None

    # --- dispatch --------------------------------------------------------------------------------------------------
    def handle(self, msg) -> None:
        kind = msg.kind
        if kind == "cc":
            self._cc(msg)
        elif kind in ("note_on", "note_off"):
            self._note(msg)
        elif kind == "pitch_bend":
            if self._plays(msg.channel):
                self.stats.bends += 1
                self._post(_events().pitch_bend(max(-1.0, (msg.a - 8192) / 8192), msg.time,
                                                self.mapping.bend_range))
        elif kind == "program":
            self.stats.programs += 1
            if self.mapping.program_change and self.switcher is not None:
                self.switcher.select_index(msg.a)
        else:
            self.stats.ignored += 1

    def _plays(self, channel: int) -> bool:
        return self.mapping.channel is None or channel == self.mapping.channel

    def _note(self, msg) -> None:
        if not self._plays(msg.channel):
            self.stats.ignored += 1
            return
        note, on = msg.a, msg.kind == "note_on" and msg.b > 0
        lo_hi = self.mapping.switch_notes
        if lo_hi and lo_hi[0] <= note <= lo_hi[1]:
            if on and self.switcher is not None:
                self.switcher.select_index(note - lo_hi[0])
            return
        self.stats.notes += on
        ev = _events()
        if on:
            self._sustained.discard(note)
            self._held.add(note)
            self._post(ev.note_on(note, msg.b / 127.0, msg.time))
        elif self._pedal and note in self._held:
            self._sustained.add(note)
        else:
            self._held.discard(note)
            self._post(ev.note_off(note, msg.time))

    def all_notes_off(self, t: float | None = None) -> None:
        ev = _events()
        for note in sorted(self._held | self._sustained):
            self._post(ev.note_off(note, t))
        self._held.clear()
        self._sustained.clear()

    def _cc(self, msg) -> None:
        self.stats.ccs += 1
        cc, value = msg.a, msg.b
        self.last_cc = (cc, value)
        if cc == SUSTAIN_CC and self._plays(msg.channel):
            self._pedal = value >= 64
            if not self._pedal:
                ev = _events()
                for note in sorted(self._sustained):
                    self._held.discard(note)
                    self._post(ev.note_off(note, msg.time))
                self._sustained.clear()
            return
        if cc in (ALL_SOUND_OFF_CC, ALL_NOTES_OFF_CC):
            self.all_notes_off(msg.time)
            return
        if cc > MAX_CC:
            self.stats.ignored += 1
            return
        if self.learning is not None:
            param, self.learning = self.learning, None
            binding = self.mapping.bind(cc, param)
            self._takeover[cc] = _Takeover(last_u=value / 127.0)
            if self.on_learned:
                self.on_learned(binding)
            return  # the learning move only binds; soft takeover picks the value up from here
        if self.mapping.switch_cc == cc:
            if self.switcher is not None:
                self.switcher.select_fraction(value / 127.0)
            return
        binding = next((b for b in self.mapping.cc if b.cc == cc and b.channel in (None, msg.channel)), None)
        if binding is None or binding.param not in self.bank:
            self.stats.unmapped += 1
            return
        self._move(binding, value / 127.0, msg.time)

    def _move(self, b: CCBinding, u: float, t: float) -> None:
        bank, param = self.bank, b.param
        spec = bank.specs[param]
        if b.minimum is not None or b.maximum is not None:
            lo = spec.minimum if b.minimum is None else b.minimum
            hi = spec.maximum if b.maximum is None else b.maximum
            to_value = lambda x: lo + x * (hi - lo)  # noqa: E731
            span = hi - lo
            here = (bank.values[param] - lo) / span if span else 0.0
        else:
            to_value = spec.from_unit
            here = bank.unit(param)
        state = self._takeover.setdefault(b.cc, _Takeover())
        engaged = state.version == bank.versions[param]
        if not engaged and self.mapping.soft_takeover:
            crossed = state.last_u is not None and (state.last_u - here) * (u - here) <= 0
            if not (crossed or abs(u - here) <= self.TAKEOVER_TOLERANCE):
                state.last_u = u
                self.stats.waiting += 1
                return
        state.last_u = u
        bank.set(param, to_value(u), t)
        state.version = bank.versions[param]


class Performance:
    """What a performer's controllers drive, wired to one engine: the parameter bank, the MIDI mapper, the preset
    switcher; MIDI learn saves the learned mapping to the preset's user copy. The UI and MidiInput share it."""

    def __init__(self, engine, preset, save_learned: bool = True):
        from instrument.presets import PresetSwitcher

        self.engine = engine
        self.preset = preset
        self.save_learned = save_learned
        self.saved_to = None  # where the last learned mapping was saved
        self.save_error = ""
        self.bank = ParameterBank(engine.parameters(), engine.post, self._engine_values(engine.parameters()))
        self.switcher = PresetSwitcher(engine, preset, on_switched=self._switched)
        self.mapper = Mapper(preset.mapping, self.bank, engine.post, self.switcher, on_learned=self._learned)
        self.listeners: list[Callable] = []  # called with the new preset after a switch (the UI)

    def _engine_values(self, specs) -> dict[str, float]:
        values = {}
        for s in specs:
            try:
                values[s.name] = float(self.engine.get(s.name))
            except (KeyError, TypeError, ValueError):
                values[s.name] = s.default
        return values

    def _switched(self, preset) -> None:
        self.preset = preset
        specs = self.engine.parameters()
        self.bank.replace(specs, self._engine_values(specs))
        self.mapper.set_mapping(preset.mapping)
        for fn in list(self.listeners):
            fn(preset)

    def _learned(self, binding: CCBinding) -> None:
        if not self.save_learned:
            return
        from instrument.presets import save_preset

        try:
            self.saved_to = save_preset(self.preset)
            self.preset.path, self.preset.source = self.saved_to, "user"
            self.save_error = ""
        except UserError as e:
            self.save_error = str(e)

    def save_as(self, name: str):
        """The playing preset with the knobs where they are now, as a new user preset `name` (its path)."""
        from instrument.presets import save_preset

        return save_preset(self.preset, name, values=dict(self.bank.values))

    def close(self) -> None:
        self.switcher.close()
        self.mapper.all_notes_off()
