"""Presets: loading, shadowing, listing, saving (round trip through the small TOML writer), and one-line errors."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from instrument.errors import UserError
from instrument.mapping import CCBinding, Mapping
from instrument.presets import (dumps_toml, list_presets, load_preset, read_model_metadata, save_preset,
                                user_dir)
from tinymodels import tiny_wavegan

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
description = "tiny test piano"
model = "model.onnx"
kind = "wavegan"
mode = "oneshot"
root_note = 57
morph = ["a", "b"]
[defaults]
temperature = 0.8
"latent.3" = 0.25
[mapping]
channel = 2
programs = ["tiny", "other"]
switch_notes = [0, 11]
[mapping.cc]
30 = "temperature"
74 = { param = "filter.cutoff", min = 0.2, max = 0.9 }
[latents]
a = [0.0, 0.5, -0.5]
b = [1.0, -1.0, 0.0]
[effects.delay]
time_ms = 350.0
feedback = 0.4
"""


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    shipped, config = tmp_path / "shipped", tmp_path / "config"
    monkeypatch.setenv("NEURALINST_SHIPPED_PRESETS", str(shipped))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return shipped, config / "neuralinst" / "presets"


def write_preset(root: Path, name: str, text: str = GOOD, model: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    if model:
        tiny_wavegan(folder / "model.onnx", latent=3, block=256)
    (folder / "preset.toml").write_text(text)
    return folder


def test_load_by_name_reads_every_field(dirs):
    shipped, _ = dirs
    write_preset(shipped, "tiny")
    p = load_preset("tiny")
    assert (p.name, p.kind, p.mode, p.root_note, p.source) == ("tiny", "wavegan", "oneshot", 57, "shipped")
    assert p.model_path == (shipped / "tiny" / "model.onnx").resolve()
    assert p.defaults == {"temperature": 0.8, "latent.3": 0.25}
    assert p.latents["b"] == [1.0, -1.0, 0.0] and p.morph == ("a", "b")
    assert p.effects == {"delay": {"time_ms": 350.0, "feedback": 0.4}}
    m = p.mapping
    assert m.channel == 2 and m.programs == ["tiny", "other"] and m.switch_notes == (0, 11)
    assert m.cc_numbers("temperature") == [21, 30]  # the default bank stays, the preset adds to it
    (cutoff,) = [b for b in m.cc if b.cc == 74]
    assert (cutoff.param, cutoff.minimum, cutoff.maximum) == ("filter.cutoff", 0.2, 0.9)


def test_onnx_path_gives_a_preset_with_defaults(tmp_path):
    model = tiny_wavegan(tmp_path / "x" / "piano.onnx", latent=4, block=128)
    p = load_preset(str(model))
    assert (p.name, p.kind, p.mode, p.path, p.defaults) == ("piano", "wavegan", "oneshot", None, {})
    assert [b.cc for b in p.mapping.cc if b.param.startswith("latent.")] == list(range(70, 78))
    assert read_model_metadata(model)["block_size"] == 128


def test_user_copy_shadows_shipped_and_listing_shows_both_sources(dirs):
    shipped, user = dirs
    write_preset(shipped, "tiny")
    write_preset(shipped, "zeta", GOOD.replace("tiny test piano", "zeta"))
    write_preset(user, "tiny", GOOD.replace("tiny test piano", "mine"))
    write_preset(shipped, "broken", "kind = 'wavegan'\nbogus = 1\n")
    assert load_preset("tiny").description == "mine" and load_preset("tiny").source == "user"
    rows = {r.name: r for r in list_presets()}
    assert list(rows) == ["broken", "tiny", "zeta"]
    assert rows["tiny"].source == "user" and rows["tiny"].shadows and rows["zeta"].source == "shipped"
    assert rows["tiny"].model_bytes > 3 * 256 * 4 and rows["tiny"].kind == "wavegan"
    assert "bogus" in rows["broken"].error


def test_save_round_trips_through_the_toml_writer(dirs):
    shipped, user = dirs
    write_preset(shipped, "tiny")
    p = load_preset("tiny")
    p.mapping.bind(99, "latent.5")
    p.mapping.cc = sorted(p.mapping.cc + [CCBinding(40, "volume", channel=3, minimum=0.0, maximum=0.5)],
                          key=lambda b: b.cc)
    path = save_preset(p, "tiny-live", values={"temperature": 1.3, "morph": 0.5})
    assert path == user / "tiny-live" / "preset.toml"
    q = load_preset("tiny-live")
    assert q.source == "user" and q.model_path == p.model_path  # the model is referenced, never copied
    assert q.defaults == {"temperature": 1.3, "latent.3": 0.25, "morph": 0.5}
    assert q.mapping == p.mapping and q.latents == p.latents and q.effects == p.effects and q.morph == p.morph
    assert not (user / "tiny-live" / "model.onnx").exists()


def test_toml_writer_quotes_and_escapes():
    doc = {"s": 'a "quoted" \\ line\n', "x": 1.5e-7, "flag": False,
           "t": {"latent.0": 1.0, "deep": {"cc": {"7": {"param": "volume", "min": 0.0}}}}}
    assert tomllib.loads(dumps_toml(doc)) == doc


BAD = [
    ("not toml", "kind = ", "not valid TOML"),
    ("unknown key", "colour = 'red'\n" + GOOD, "'colour'"),
    ("unknown mapping key", GOOD.replace("channel = 2", "chanel = 2"), "mapping.chanel"),
    ("cc out of range", GOOD.replace("30 = ", "130 = "), "mapping.cc.130"),
    ("cc not a number", GOOD.replace("30 = ", "knob = "), "mapping.cc.knob"),
    ("unknown parameter", GOOD.replace('30 = "temperature"', '30 = "temprature"'), "temprature"),
    ("bad channel", GOOD.replace("channel = 2", "channel = 16"), "mapping.channel"),
    ("mode for kind", GOOD.replace('mode = "oneshot"', 'mode = "stream"'), "mode 'stream'"),
    ("bad kind", GOOD.replace('kind = "wavegan"', 'kind = "gan"'), "kind 'gan'"),
    ("root note", GOOD.replace("root_note = 57", "root_note = 200"), "root_note"),
    ("default param", GOOD.replace("temperature = 0.8", "warmth = 0.8"), "defaults.warmth"),
    ("default value", GOOD.replace("temperature = 0.8", "temperature = 'hot'"), "defaults.temperature"),
    ("ragged latents", GOOD.replace("b = [1.0, -1.0, 0.0]", "b = [1.0]"), "latents"),
    ("morph name", GOOD.replace('morph = ["a", "b"]', 'morph = ["a", "c"]'), "morph"),
    ("effect", GOOD.replace("[effects.delay]", "[effects.flanger]"), "effects.flanger"),
    ("switch notes", GOOD.replace("switch_notes = [0, 11]", "switch_notes = [11, 0]"), "mapping.switch_notes"),
]


@pytest.mark.parametrize("label,text,field", BAD, ids=[b[0] for b in BAD])
def test_malformed_presets_get_one_line_naming_file_and_field(dirs, label, text, field):
    shipped, _ = dirs
    write_preset(shipped, "bad", text)
    with pytest.raises(UserError) as e:
        load_preset("bad")
    message = str(e.value)
    assert "\n" not in message and str(shipped / "bad" / "preset.toml") in message and field in message, message


def test_missing_model_and_unknown_name(dirs):
    shipped, _ = dirs
    write_preset(shipped, "nomodel", GOOD, model=False)
    with pytest.raises(UserError, match=r"preset.toml: model: the model file .*model.onnx does not exist"):
        load_preset("nomodel")
    with pytest.raises(UserError, match=r"no preset or model named 'nothere' \(known presets: nomodel"):
        load_preset("nothere")
    with pytest.raises(UserError, match="no such model file"):
        load_preset("/no/such/model.onnx")
    (shipped / "junk.onnx").write_bytes(b"\x00\x01garbage")
    with pytest.raises(UserError, match="junk.onnx"):
        load_preset(str(shipped / "junk.onnx"))


def test_presets_command_lists_name_kind_mode_size_source(dirs):
    shipped, user = dirs
    write_preset(shipped, "tiny")
    write_preset(user, "tiny")
    write_preset(user, "mine")
    out = subprocess.run([sys.executable, "-m", "neuralinst", "presets"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["name", "kind", "mode", "size", "source"]
    assert lines[1].split()[:3] == ["mine", "wavegan", "oneshot"] and lines[1].endswith("user")
    assert lines[2].startswith("tiny") and "user (shadows shipped)" in lines[2] and "KB" in lines[2]
