"""How a MIDI controller plays the instrument: the per-preset mapping and the live translator.

Two halves:

- `Mapping` (plain data, read from and written to a preset's `[mapping]` table): CC → performer parameter, which
  channel plays notes, pitch-bend range, and how Program Change / a note range / a CC switch presets.
- `ParameterBank` + `Mapper` (live): the bank holds every performer parameter's target value and posts changes
  to the engine; the mapper turns parsed MIDI messages into engine Events, with soft takeover (a knob whose
  position differs from the parameter's value takes over only once it passes through it), a sustain pedal, and
  MIDI learn (arm a parameter, move a knob: bound).

Performer parameter names are the engine's (docs/DESIGN.md §4): `temperature`, `latent.0` … `latent.N`, `morph`,
`drift`, `volume`, `filter.cutoff`, `delay.send`, `reverb.send`, `fx.<name>.bypass`.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from instrument.errors import UserError

PARAMETERS = ("temperature", "morph", "drift", "volume", "filter.cutoff", "delay.send", "reverb.send")
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
    """Fits the common 8-knob controllers: CC 70–77 (Akai MPK, many Arturias) play the latent knobs, CC 21–27
    (Novation Launchkey and friends' default bank) the performance parameters, plus mod wheel and channel volume."""
    out = [CCBinding(70 + i, f"latent.{i}") for i in range(LATENT_KNOBS)]
    perf = ("temperature", "morph", "drift", "volume", "filter.cutoff", "delay.send", "reverb.send")
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
