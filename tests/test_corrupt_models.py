"""Loading refuses bad model files with one UserError sentence: never a crash, a traceback or silence."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import external_data_helper

from export.onnx_export import export_model
from instrument.errors import UserError
from instrument.meta import METADATA_KEY
from instrument.model import SEAL_KEY, load_model, seal_bytes
from toy_models import ToyGRU

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    return export_model(ToyGRU(), tmp_path_factory.mktemp("good") / "gru.onnx").path


def _rewrite(src, dst, meta_edit=None, proto_edit=None, seal=True, keep_meta=True):
    """A copy of `src` with its metadata and/or graph edited, then sealed again (so only the edit is wrong)."""
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props[METADATA_KEY])
    if meta_edit:
        meta_edit(meta)
    if proto_edit:
        proto_edit(proto)
    del proto.metadata_props[:]
    if keep_meta:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    data = proto.SerializeToString()
    dst.write_bytes(seal_bytes(data) if seal else data)
    return dst


def _refused(path, *fragments):
    with pytest.raises(UserError) as e:
        load_model(path, device="cpu")
    message = str(e.value)
    for f in fragments:
        assert f in message, message
    assert "\n" not in message
    return message


def test_the_good_model_loads(good):
    assert load_model(good, device="cpu").meta.kind == "vrnn"


def test_missing_empty_and_non_onnx_files(tmp_path, good):
    _refused(tmp_path / "absent.onnx", "no such model file")
    _refused(tmp_path, "not a file")
    (tmp_path / "empty.onnx").write_bytes(b"")
    _refused(tmp_path / "empty.onnx", "empty")
    (tmp_path / "text.onnx").write_text("this is not a model\n" * 20)
    _refused(tmp_path / "text.onnx", "not an ONNX model")
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(5000))
    _refused(tmp_path / "random.onnx", "not an ONNX model")
    data = good.read_bytes()
    (tmp_path / "half.onnx").write_bytes(data[: len(data) // 2])
    _refused(tmp_path / "half.onnx")


def test_metadata_missing_unversioned_or_newer(tmp_path, good):
    _refused(_rewrite(good, tmp_path / "nometa.onnx", keep_meta=False), "no neuralinst metadata")
    _refused(_rewrite(good, tmp_path / "noversion.onnx", lambda m: m.pop("format_version")), "no format version")
    _refused(_rewrite(good, tmp_path / "newer.onnx", lambda m: m.update(format_version=99)), "newer", "upgrade")
    _refused(_rewrite(good, tmp_path / "kind.onnx", lambda m: m.update(kind="rave")), "unknown model kind")


def test_unsealed_or_tampered_files(tmp_path, good):
    _refused(_rewrite(good, tmp_path / "unsealed.onnx", seal=False), "no integrity seal")
    data = bytearray(good.read_bytes())
    weights = onnx.load(str(good)).graph.initializer[0].raw_data
    at = bytes(data).index(weights[:32]) + 5
    data[at] ^= 0x10  # one bit of one weight: a valid graph, but not the exported model
    (tmp_path / "tampered.onnx").write_bytes(bytes(data))
    _refused(tmp_path / "tampered.onnx", "corrupt")


def test_graph_io_must_match_metadata(tmp_path, good):
    def wider_state(m):
        m["state"][1]["shape"] = [2]  # "last" (zeros initially, so only the graph can disagree)

    def renamed_control(m):
        m["controls"][0]["name"] = "heat"

    def longer_block(m):
        m["block_size"] = 32

    def int_state(m):
        m["state"][1]["dtype"] = "int64"

    _refused(_rewrite(good, tmp_path / "a.onnx", wider_state), "'state.last'", "shape")
    _refused(_rewrite(good, tmp_path / "b.onnx", renamed_control), "do not match its metadata", "temperature")
    _refused(_rewrite(good, tmp_path / "c.onnx", longer_block), "'audio'")
    _refused(_rewrite(good, tmp_path / "d.onnx", int_state), "int64")


def test_absurd_shapes_and_initial_state(tmp_path, good):
    _refused(_rewrite(good, tmp_path / "huge.onnx", lambda m: m["state"][0].update(shape=[100000, 100000])),
             "absurd shape")
    _refused(_rewrite(good, tmp_path / "init.onnx", lambda m: m["extra"]["initial_state"].update(h=[0.0] * 3)),
             "initial value")
    with pytest.raises(UserError, match="batch"):
        load_model(good, batch=10**9)


def test_external_data_must_stay_in_the_folder(tmp_path, good):
    folder = tmp_path / "model"
    folder.mkdir()
    proto = onnx.load(str(good))
    external_data_helper.convert_model_to_external_data(proto, all_tensors_to_one_file=True,
                                                        location="weights.bin", size_threshold=1024)
    onnx.save(proto, str(folder / "plain.onnx"))  # writes weights.bin beside it
    data = (folder / "plain.onnx").read_bytes()
    inside = folder / "inside.onnx"
    inside.write_bytes(seal_bytes(_strip_seal(data)))
    assert load_model(inside, device="cpu").generate(32).shape == (1, 32)  # beside the model: fine

    for name, location in (("parent", "../weights.bin"), ("absolute", str(folder / "weights.bin")),
                           ("nested", "sub/../../weights.bin")):
        edited = onnx.load(str(folder / "plain.onnx"), load_external_data=False)
        for tensor in edited.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        path = folder / f"{name}.onnx"
        path.write_bytes(seal_bytes(_strip_seal(edited.SerializeToString())))
        _refused(path, "outside its own folder")
    (folder / "weights.bin").unlink()
    _refused(inside, "missing")


def _strip_seal(data: bytes) -> bytes:
    proto = onnx.load_from_string(data)
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != SEAL_KEY]
    del proto.metadata_props[:]
    for k, v in keep:
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    return proto.SerializeToString()


def test_fuzzed_copies_raise_only_user_errors(tmp_path, good):
    """A few hundred truncated and bit-flipped copies: each loads or is refused with a UserError, nothing else."""
    data = good.read_bytes()
    rng = random.Random(1234)
    outcomes = {"loaded": 0, "refused": 0}
    path = tmp_path / "fuzz.onnx"
    for i in range(300):
        mutated = bytearray(data)
        if i % 3 == 0:
            mutated = mutated[: rng.randrange(1, len(data))]
        else:
            for _ in range(rng.choice((1, 1, 2, 8))):
                mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(mutated))
        try:
            model = load_model(path, device="cpu")
            model.generate(40)
            outcomes["loaded"] += 1
        except UserError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] >= 290, outcomes  # the seal catches almost every flip; the rest still load safely


def test_cli_prints_one_sentence_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    r = subprocess.run([sys.executable, "-m", "neuralinst", "render", "--model", str(bad), "--seconds", "1",
                        "--out", str(tmp_path / "x.wav")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
