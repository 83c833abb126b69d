"""Presets: a model plus how to play it (mode, root note, defaults, MIDI mapping, latent snapshots, effects).

A preset is a folder `presets/<name>/` holding `preset.toml`, `model.onnx` and `MODEL_CARD.md`. Shipped presets
live in the repository's `presets/`; the performer's own (saved from the UI, learned mappings) live in the
platform's config dir (`$XDG_CONFIG_HOME/neuralinst/presets`, default `~/.config/neuralinst/presets`) and
shadow shipped ones of the same name. `--model` takes a preset name, a preset folder/TOML, or an `.onnx` file.

    name = "wavegan-piano"          # optional; the folder name otherwise
    description = "Piano one-shots"
    model = "model.onnx"            # relative to the preset folder, or absolute
    kind = "wavegan"                # wavegan | vrnn | samplernn (checked against the model's metadata at load)
    mode = "oneshot"                # oneshot | continuous (WaveGAN) | stream (VRNN, SampleRNN)
    root_note = 60
    morph = ["a", "b"]              # the two latent snapshots the morph knob moves between
    [defaults]                      # performer parameter = value
    temperature = 1.0
    [mapping]                       # see instrument/mapping.py: cc table, channel, programs, switch_notes...
    cc = { 70 = "latent.0", 74 = { param = "filter.cutoff", min = 0.2, max = 1.0 } }
    [latents]                       # named latent vectors (snapshots)
    a = [0.1, -0.3, ...]
    [effects.delay]                 # effect settings, passed to the engine as they are
    time_ms = 350.0

Every malformed preset is refused with one sentence naming the file and the field.
"""
from __future__ import annotations

import math
import mmap
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instrument.errors import UserError
from instrument.mapping import Mapping, is_parameter_name

PRESET_FILE = "preset.toml"
MODEL_FILE = "model.onnx"
MODEL_CARD = "MODEL_CARD.md"
KINDS = ("wavegan", "vrnn", "samplernn")
MODES = ("oneshot", "continuous", "stream")
MODES_FOR_KIND = {"wavegan": ("oneshot", "continuous"), "vrnn": ("stream",), "samplernn": ("stream",)}
DEFAULT_MODE = {"wavegan": "oneshot", "vrnn": "stream", "samplernn": "stream"}
# Effects the engine's chain knows; their settings are plain scalars the engine interprets.
EFFECTS = ("filter", "delay", "reverb", "limiter", "chorus", "distortion", "eq", "compressor")
TOP_LEVEL_KEYS = ("name", "description", "model", "kind", "mode", "root_note", "morph", "defaults", "mapping",
                  "latents", "effects")
MAX_LATENT = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REPO_PRESETS = Path(__file__).resolve().parent.parent / "presets"


@dataclass
class Preset:
    name: str
    path: Path | None  # the preset.toml (None for a bare .onnx)
    model_path: Path
    kind: str
    mode: str
    root_note: int = 60
    defaults: dict[str, float] = field(default_factory=dict)
    mapping: Mapping = field(default_factory=Mapping)
    latents: dict[str, list[float]] = field(default_factory=dict)
    effects: dict[str, dict] = field(default_factory=dict)
    description: str = ""
    morph: tuple[str, str] | None = None  # latent snapshot names the `morph` knob goes between (0 → first)
    source: str = "file"  # "shipped" | "user" | "file"

    @property
    def folder(self) -> Path | None:
        return self.path.parent if self.path else None


@dataclass
class PresetListing:
    """One row of `neuralinst presets`: what a performer needs to choose, or why a preset cannot be used."""

    name: str
    source: str  # "shipped" | "user"
    path: Path
    kind: str = ""
    mode: str = ""
    model_bytes: int = 0
    description: str = ""
    shadows: bool = False  # a user preset hiding a shipped one of the same name
    error: str = ""


# --- where presets live ---------------------------------------------------------------------------------------
def shipped_dir() -> Path:
    """The shipped presets (overridable for tests and installs with $NEURALINST_SHIPPED_PRESETS)."""
    env = os.environ.get("NEURALINST_SHIPPED_PRESETS")
    return Path(env) if env else REPO_PRESETS


def config_dir() -> Path:
    """The platform's per-user config dir for neuralinst."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "neuralinst"
    if sys.platform.startswith("win"):
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "neuralinst"
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config") / "neuralinst"


def user_dir() -> Path:
    return config_dir() / "presets"


def _preset_folders(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / PRESET_FILE).is_file()}


# --- loading ---------------------------------------------------------------------------------------------------
def load_preset(name_or_path: str | os.PathLike) -> Preset:
    """A preset by name (user copy first, then shipped), by folder or preset.toml path, or from a bare .onnx."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if text.endswith(".onnx"):
        if not path.is_file():
            raise UserError(f"{path}: no such model file.")
        return preset_for_model(path)
    if path.suffix == ".toml" and path.is_file():
        return _load_file(path, "file")
    if (path / PRESET_FILE).is_file() and (os.sep in text or text.startswith(".")):
        return _load_file(path / PRESET_FILE, "file")
    if _NAME.fullmatch(text):
        for source, root in (("user", user_dir()), ("shipped", shipped_dir())):
            f = root / text / PRESET_FILE
            if f.is_file():
                return _load_file(f, source)
    names = sorted(set(_preset_folders(user_dir())) | set(_preset_folders(shipped_dir())))
    known = f"known presets: {', '.join(names)}" if names else "no presets are installed yet"
    raise UserError(f"no preset or model named {text!r} ({known}; or pass a path to an .onnx file).")


def preset_for_model(model_path: Path) -> Preset:
    """A bare .onnx file played with defaults: its kind from the model's metadata, the kind's default mode."""
    meta = read_model_metadata(model_path)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise UserError(f"{model_path}: not a neuralinst model (no valid kind in its metadata); export it with "
                        f"`neuralinst export`.")
    return Preset(name=model_path.stem, path=None, model_path=model_path.resolve(), kind=kind,
                  mode=DEFAULT_MODE[kind], source="file")


def _load_file(toml_path: Path, source: str) -> Preset:
    where = str(toml_path)
    try:
        raw = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: not valid TOML ({e}).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: cannot be read ({e}).") from None
    return preset_from_dict(raw, toml_path, source)


def preset_from_dict(raw: dict[str, Any], toml_path: Path, source: str = "file") -> Preset:
    where = str(toml_path)
    folder = toml_path.parent
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise UserError(f"{where}: unknown key {key!r} (expected one of {', '.join(TOP_LEVEL_KEYS)}).")

    def string(key: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str):
            raise UserError(f"{where}: {key} must be a string.")
        return value

    name = string("name", folder.name)
    if not _NAME.fullmatch(name):
        raise UserError(f"{where}: name {name!r} must be letters, digits, '.', '_' or '-' (up to 64).")
    model_path = Path(string("model", MODEL_FILE)).expanduser()
    model_path = (model_path if model_path.is_absolute() else folder / model_path).resolve()
    if not model_path.is_file():
        raise UserError(f"{where}: model: the model file {model_path} does not exist.")
    if "kind" in raw:
        kind = string("kind")
        if kind not in KINDS:
            raise UserError(f"{where}: kind {kind!r} is unknown (expected one of {', '.join(KINDS)}).")
    else:
        kind = read_model_metadata(model_path).get("kind")
        if kind not in KINDS:
            raise UserError(f"{where}: kind is missing and the model's metadata does not say it.")
    mode = string("mode", DEFAULT_MODE[kind])
    if mode not in MODES:
        raise UserError(f"{where}: mode {mode!r} is unknown (expected one of {', '.join(MODES)}).")
    if mode not in MODES_FOR_KIND[kind]:
        raise UserError(f"{where}: mode {mode!r} does not suit a {kind} model (use "
                        f"{' or '.join(MODES_FOR_KIND[kind])}).")
    root = raw.get("root_note", 60)
    if not isinstance(root, int) or isinstance(root, bool) or not 0 <= root <= 127:
        raise UserError(f"{where}: root_note must be a MIDI note number 0–127.")

    defaults = _table(raw, "defaults", where)
    for key, value in defaults.items():
        if not is_parameter_name(key):
            raise UserError(f"{where}: defaults.{key}: unknown parameter.")
        if not _is_number(value):
            raise UserError(f"{where}: defaults.{key} must be a finite number.")
    mapping = Mapping.from_dict(_table(raw, "mapping", where), where)

    latents: dict[str, list[float]] = {}
    for key, value in _table(raw, "latents", where).items():
        if not (isinstance(value, list) and 0 < len(value) <= MAX_LATENT and all(_is_number(v) for v in value)):
            raise UserError(f"{where}: latents.{key} must be a list of up to {MAX_LATENT} finite numbers.")
        latents[key] = [float(v) for v in value]
    sizes = {len(v) for v in latents.values()}
    if len(sizes) > 1:
        raise UserError(f"{where}: latents: the snapshots have different lengths ({sorted(sizes)}).")
    morph = raw.get("morph")
    if morph is not None:
        if not (isinstance(morph, list) and len(morph) == 2 and all(isinstance(m, str) for m in morph)):
            raise UserError(f"{where}: morph must be two latent snapshot names, e.g. [\"a\", \"b\"].")
        for m in morph:
            if m not in latents:
                raise UserError(f"{where}: morph: no latent snapshot named {m!r} in [latents].")
        morph = (morph[0], morph[1])

    effects: dict[str, dict] = {}
    for key, value in _table(raw, "effects", where).items():
        if key not in EFFECTS:
            raise UserError(f"{where}: effects.{key}: unknown effect (expected one of {', '.join(EFFECTS)}).")
        if not isinstance(value, dict):
            raise UserError(f"{where}: effects.{key} must be a table of settings.")
        for k, v in value.items():
            if not (isinstance(v, (bool, str)) or _is_number(v)):
                raise UserError(f"{where}: effects.{key}.{k} must be a number, a boolean or a string.")
        effects[key] = dict(value)

    return Preset(name=name, path=toml_path.resolve(), model_path=model_path, kind=kind, mode=mode, root_note=root,
                  defaults={k: float(v) for k, v in defaults.items()}, mapping=mapping, latents=latents,
                  effects=effects, description=string("description", ""), morph=morph, source=source)


def _table(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} must be a table ([{key}]).")
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --- listing ---------------------------------------------------------------------------------------------------
def list_presets() -> list[PresetListing]:
    """Every preset a performer can choose, user copies first shadowing shipped ones, sorted by name.
    A broken preset is listed with its error rather than hidden (or raised)."""
    shipped, user = _preset_folders(shipped_dir()), _preset_folders(user_dir())
    rows = []
    for name in sorted(set(shipped) | set(user)):
        source = "user" if name in user else "shipped"
        folder = (user if source == "user" else shipped)[name]
        row = PresetListing(name=name, source=source, path=folder / PRESET_FILE,
                            shadows=source == "user" and name in shipped)
        try:
            p = _load_file(folder / PRESET_FILE, source)
            row.kind, row.mode, row.description = p.kind, p.mode, p.description
            row.model_bytes = p.model_path.stat().st_size
        except UserError as e:
            row.error = str(e)
        rows.append(row)
    return rows


def preset_names() -> list[str]:
    """Names of the usable presets, in list order (Program Change n selects the n-th when no programs are set)."""
    return [r.name for r in list_presets() if not r.error]


# --- saving ----------------------------------------------------------------------------------------------------
def save_preset(preset: Preset, name: str | None = None, values: dict[str, float] | None = None) -> Path:
    """Write `preset` (renamed to `name`, with the current parameter `values` as its defaults) as a user preset;
    returns the preset.toml path. The model is referenced where it lies, never copied."""
    name = name or preset.name
    if not _NAME.fullmatch(name):
        raise UserError(f"preset name {name!r} must be letters, digits, '.', '_' or '-' (up to 64).")
    folder = user_dir() / name
    defaults = dict(preset.defaults)
    if values:
        defaults.update({k: float(v) for k, v in values.items() if is_parameter_name(k) and _is_number(v)})
    doc: dict[str, Any] = {"name": name}
    if preset.description:
        doc["description"] = preset.description
    doc.update({"model": str(preset.model_path.resolve()), "kind": preset.kind, "mode": preset.mode,
                "root_note": preset.root_note})
    if preset.morph:
        doc["morph"] = list(preset.morph)
    doc["defaults"] = dict(sorted(defaults.items()))
    doc["mapping"] = preset.mapping.to_dict()
    if preset.latents:
        doc["latents"] = preset.latents
    if preset.effects:
        doc["effects"] = preset.effects
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (PRESET_FILE + ".tmp")
        tmp.write_text(f"# neuralinst preset, saved from the instrument\n{dumps_toml(doc)}", encoding="utf-8")
        os.replace(tmp, folder / PRESET_FILE)  # atomic: a crash never leaves half a preset
    except OSError as e:
        raise UserError(f"cannot save preset {name!r} to {folder} ({e.strerror or e}).") from None
    return folder / PRESET_FILE


def dumps_toml(doc: dict[str, Any]) -> str:
    """A small TOML writer for what presets hold: scalars, lists of scalars, nested tables (inline below 2 levels)."""
    lines: list[str] = []
    _write_table(doc, [], lines)
    return "\n".join(lines).strip() + "\n"


def _write_table(table: dict, prefix: list[str], lines: list[str]) -> None:
    # Two levels of [a.b] sections; deeper tables (a mapping.cc entry with a range) are written inline.
    inline = len(prefix) >= 2
    scalars = {k: v for k, v in table.items() if inline or not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if k not in scalars}
    if prefix and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in tables.items():
        _write_table(v, [*prefix, k], lines)


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v} to TOML")
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Path):
        return _string(str(v))
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# --- switching presets live ------------------------------------------------------------------------------------
class PresetSwitcher:
    """Program Change, switch notes/CC and the UI → `engine.switch(preset)`, on a worker thread: loading a model
    takes a while, and neither MIDI nor the UI may wait for it. Requests coalesce (a burst of program changes
    loads only the last one). A preset that fails to load leaves the current one playing and sets `error`."""

    def __init__(self, engine, current: Preset, on_switched=None, crossfade_ms: float = 40.0):
        import threading

        self.engine = engine
        self.current = current
        self.on_switched = on_switched
        self.crossfade_ms = crossfade_ms
        self.error = ""
        self.switching = ""  # the preset being loaded, for the UI
        self.switches = 0
        self._request: tuple[str, object] | None = None
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="preset-switcher", daemon=True)
        self._thread.start()

    def names(self) -> list[str]:
        """What Program Change n selects: the current preset's `mapping.programs`, else every usable preset."""
        return list(self.current.mapping.programs) or preset_names()

    def select_index(self, index: int) -> None:
        self._ask("index", int(index))

    def select_fraction(self, u: float) -> None:
        self._ask("fraction", float(u))

    def select_name(self, name: str) -> None:
        self._ask("name", name)

    def step(self, delta: int) -> None:
        """Next (+1) or previous (-1) preset in list order."""
        self._ask("step", int(delta))

    def _ask(self, how: str, value) -> None:
        self._request = (how, value)  # one slot: the newest request wins
        self._wake.set()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(5.0)

    def _resolve(self, how: str, value) -> str | None:
        if how == "name":
            return str(value)
        names = self.names()
        if not names:
            return None
        if how == "index":
            return names[value] if 0 <= value < len(names) else None
        if how == "fraction":
            return names[min(int(value * len(names)), len(names) - 1)]
        here = names.index(self.current.name) if self.current.name in names else -1
        return names[(here + value) % len(names)]

    def _work(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            request, self._request = self._request, None
            if request is None:
                continue
            try:
                name = self._resolve(*request)
                if name is None:
                    self.error = f"no preset at {request[0]} {request[1]} (presets: {', '.join(self.names())})"
                    continue
                if name == self.current.name:
                    continue
                self.switching = name
                preset = load_preset(name)
                done = self.engine.switch(preset, crossfade_ms=self.crossfade_ms)
                if hasattr(done, "wait"):  # the engine loads and crossfades in the background
                    done.wait(60.0)
                failed = getattr(self.engine, "last_error", None)
                if failed:
                    self.error = failed
                    continue
                self.current, self.error = preset, ""
                self.switches += 1
                if self.on_switched:
                    self.on_switched(preset)
            except UserError as e:
                self.error = str(e)
            except Exception as e:  # the show goes on with the current preset
                self.error = f"switching failed: {type(e).__name__}: {e}"
            finally:
                self.switching = ""


# --- the model's metadata without onnx or onnxruntime ----------------------------------------------------------
def read_model_metadata(path: Path) -> dict[str, Any]:
    """The neuralinst metadata (ModelMeta as a dict) of an .onnx file, read straight from the protobuf's top-level
    `metadata_props` (field 14) without loading the graph: cheap enough to list many large models."""
    import json

    from instrument.meta import METADATA_KEY

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            props = _onnx_metadata_props(buf)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as an ONNX model ({e}).") from None
    if METADATA_KEY not in props:
        raise UserError(f"{path}: has no neuralinst metadata; export it with `neuralinst export`.")
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: its neuralinst metadata is not valid JSON ({e.msg}).") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: its neuralinst metadata is not a JSON object.")
    return meta


def _varint(buf, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated protobuf")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf, start: int, end: int):
    i = start
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, wire, value, i
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > end:
                raise ValueError("truncated protobuf")
            yield number, wire, (i, i + length), i + length
            i += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _onnx_metadata_props(buf) -> dict[str, str]:
    props: dict[str, str] = {}
    for number, wire, value, _ in _fields(buf, 0, len(buf)):
        if number == 14 and wire == 2:  # ModelProto.metadata_props: StringStringEntryProto {key = 1, value = 2}
            entry = {}
            for n, w, v, _ in _fields(buf, *value):
                if w == 2 and n in (1, 2):
                    entry[n] = bytes(buf[v[0]:v[1]]).decode("utf-8", errors="replace")
            if 1 in entry:
                props[entry[1]] = entry.get(2, "")
    return props


# --- `neuralinst presets` ---------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--paths", action="store_true", help="also show where each preset lives")


def run(args) -> int:
    rows = list_presets()
    if not rows:
        print(f"no presets found (shipped: {shipped_dir()}, user: {user_dir()}).")
        return 0
    width = max(len(r.name) for r in rows)
    print(f"{'name':<{width}}  {'kind':<9}  {'mode':<10}  {'size':>8}  source")
    for r in rows:
        source = r.source + (" (shadows shipped)" if r.shadows else "")
        if r.error:
            print(f"{r.name:<{width}}  {'-':<9}  {'-':<10}  {'-':>8}  {source}  BROKEN: {r.error}")
        else:
            print(f"{r.name:<{width}}  {r.kind:<9}  {r.mode:<10}  {_size(r.model_bytes):>8}  {source}")
        if getattr(args, "paths", False):
            print(f"{'':<{width}}  {r.path}")
    print(f"\nshipped: {shipped_dir()}\nuser:    {user_dir()}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
