"""Config registry: names, typed overrides, round trips through checkpoints, and `train --dry-run` sizes."""
import dataclasses

import pytest
import torch

from instrument.errors import UserError
from neuralinst import cli
from training.configs import apply_overrides, build_model, config_from_dict, get_config, list_configs

torch.set_num_threads(1)


def test_every_kind_has_paper_live_and_tiny_configs():
    names = set(list_configs())
    for kind in ("samplernn", "vrnn", "wavegan"):
        assert {f"{kind}-paper", f"{kind}-live", f"{kind}-tiny"} <= names
    assert {"samplernn-dadabots", "wavegan-paper-4s"} <= names


def test_overrides_are_parsed_by_the_field_type():
    c = get_config("samplernn-tiny", ["dim=48", "lr=2e-4", "weight_norm=false", "frame_sizes=8,2",
                                      "rnn=lstm", "betas=(0.8, 0.95)", "batch_size=1e1"])
    assert (c.dim, c.lr, c.weight_norm, c.frame_sizes, c.rnn, c.betas, c.batch_size) == (
        48, 2e-4, False, (8, 2), "lstm", (0.8, 0.95), 10)
    assert get_config("samplernn-tiny").dim != 48  # the registry's config is untouched


@pytest.mark.parametrize("override, words", [
    (["no_such_field=1"], "no_such_field"),
    (["dim=abc"], "dim"),
    (["dim=1.5"], "whole number"),
    (["weight_norm=maybe"], "true or false"),
    (["betas=0.5"], "2 comma-separated"),
    (["dim"], "field=value"),
])
def test_bad_overrides_are_one_sentence(override, words):
    with pytest.raises(UserError) as e:
        get_config("samplernn-tiny", override)
    assert words in str(e.value)


def test_unknown_config_names_the_known_ones():
    with pytest.raises(UserError) as e:
        get_config("samplernn-huge")
    assert "samplernn-huge" in str(e.value) and "samplernn-tiny" in str(e.value)


@pytest.mark.parametrize("name", ["samplernn-dadabots", "vrnn-live", "wavegan-paper-4s"])
def test_config_round_trips_through_a_dict(name, tmp_path):
    c = apply_overrides(get_config(name), ["lr=0.123"])
    d = dataclasses.asdict(c)
    import json

    restored = config_from_dict(json.loads(json.dumps(d)))  # tuples become lists in JSON
    assert restored == c
    path = tmp_path / "c.json"
    path.write_text(json.dumps(d))
    assert get_config(str(path), ["lr=0.5"]).lr == 0.5


def test_build_model_builds_the_kind():
    m = build_model(get_config("vrnn-tiny"))
    assert m.kind == "vrnn" and m.config.name == "vrnn-tiny"


def _dry_run(name, capsys):
    assert cli.main(["train", name, "--dry-run"]) == 0
    return capsys.readouterr().out


def _count(out: str, label: str) -> int:
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == label:
            return int(parts[-1].replace(",", ""))
    raise AssertionError(f"{label} not in\n{out}")


def test_dry_run_prints_the_wavegan_paper_sizes(capsys):
    out = _dry_run("wavegan-paper", capsys)
    # Donahue et al.'s generator at d=64, c=1 from its layer shapes: dense 100 -> 16*16d, then five transposed
    # convolutions, kernel 25: 16d->8d->4d->2d->d->c.
    d, k = 64, 25
    dense = 100 * 256 * d + 256 * d
    chans = [16 * d, 8 * d, 4 * d, 2 * d, d, 1]
    convs = sum(a * b * k + b for a, b in zip(chans[:-1], chans[1:]))
    assert _count(out, "generator") == dense + convs == 19_065_345
    model = build_model(get_config("wavegan-paper"))
    assert _count(out, "total") == sum(p.numel() for p in model.parameters())


def test_dry_run_prints_the_vrnn_paper_sizes(capsys):
    out = _dry_run("vrnn-paper", capsys)
    h, inp = 2000, 600 + 500  # the thesis's h = 2000; GRU input [phi_x(x), phi_z(z)]
    assert _count(out, "rnn") == 3 * (h * inp + h * h + 2 * h)
    assert _count(out, "total") > 20_000_000


def test_dry_run_samplernn_paper_totals_the_model(capsys):
    out = _dry_run("samplernn-paper", capsys)
    top = [line.split() for line in out.splitlines() if line.startswith("  ") and not line.startswith("    ")]
    assert _count(out, "total") == sum(int(p[-1].replace(",", "")) for p in top if p[0] != "total")
    # three GRUs of 1024 per frame tier (the thesis), at least that many weights per tier
    gru = 3 * 3 * (1024 * 1024 * 2 + 2 * 1024)
    assert _count(out, "tiers") >= 2 * gru
