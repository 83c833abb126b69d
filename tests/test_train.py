"""`neuralinst train`: every tiny model learns real audio; resume is exact; a NaN never kills a run; DDP runs."""
import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from neuralinst import cli
from training import checkpoint as ckpt
from training import train as train_mod
from training.configs import get_config

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")


@pytest.fixture(scope="module")
def data(tmp_path_factory, fixtures_dir):
    """The piano fixture prepared by our own `prepare`: 0.5 s chunks (likelihood models) and WaveGAN clips."""
    root = tmp_path_factory.mktemp("data")
    assert cli.main(["prepare", str(fixtures_dir / "piano.flac"), "--out", str(root / "chunks"), "--kind", "vrnn"]) == 0
    assert cli.main(["prepare", str(fixtures_dir / "piano.flac"), "--out", str(root / "clips"), "--kind", "wavegan",
                     "--chunk-seconds", "0.256"]) == 0
    return root


def train(config, data_dir, out, *extra) -> int:
    return cli.main(["train", config, "--data", str(data_dir), "--out", str(out), "--threads", "1", *map(str, extra)])


def losses(run, key="loss"):
    info = json.loads((ckpt.resolve(run) / ckpt.STATE_FILE).read_text())
    return [(r["step"], r[key]) for r in info["history"]["train"]], info


# Per model: config, data set, steps and overrides small enough for a loaded 2-core machine.
TINY = {
    "samplernn": ("samplernn-tiny", "chunks", 16, ["chunk_seconds=0.064", "sample_seconds=0.02", "lr=4e-3"]),
    "vrnn": ("vrnn-tiny", "chunks", 40, ["sample_seconds=0.1"]),
    "wavegan": ("wavegan-tiny", "clips", 8, ["batch_size=4"]),
}


@pytest.mark.parametrize("kind", sorted(TINY))
def test_tiny_model_learns_real_audio(kind, data, tmp_path):
    name, ds, steps, sets = TINY[kind]
    run = tmp_path / "run"
    every = steps // 2
    args = ["--steps", steps, "--checkpoint-every", every, "--log-every", 4]
    assert train(name, data / ds, run, *args, *[a for s in sets for a in ("--set", s)]) == 0
    history, info = losses(run)
    first, last = history[0][1], history[-1][1]
    if kind == "samplernn":
        assert first > 5.0 and last < first - 0.3  # nats/sample: from ~ln 256 = 5.5 towards a model of piano
    elif kind == "vrnn":
        assert last < first - 0.3
    else:  # the critic learns to tell real clips from the untrained generator's
        assert last < first - 1.0
    assert info["step"] == steps and info["kind"] == kind and len(info["history"]["valid"]) == 2
    assert info["data"]["mean"] == pytest.approx(read_mean(data / ds))
    for step in (every, steps):
        audio, sr = sf.read(run / "samples" / f"step_{step}.wav")
        assert sr == 16000 and len(audio) > 0 and np.isfinite(audio).all()
    assert (run / "loss.png").stat().st_size > 10_000
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest", f"step_{every:08d}", f"step_{steps:08d}"] or names == [
        "best", "latest", f"step_{every:08d}", f"step_{steps:08d}"]
    if kind != "wavegan":  # the lowest validation loss is pointed at by `best`
        valid = info["history"]["valid"]
        best = min(valid, key=lambda r: r["loss"])["step"]
        assert ckpt.resolve(run / "checkpoints" / "best").name == ckpt.step_dir_name(best)
    # what export/ calls: the model comes back with the trained weights
    model, loaded = ckpt.load_model(run)
    assert loaded["step"] == steps and model.config.name == name and not model.training
    if kind == "samplernn":
        bps = info["history"]["valid"][-1]["bits_per_sample"]
        assert bps == pytest.approx(info["history"]["valid"][-1]["loss"] / math.log(2), rel=1e-4)


def read_mean(folder):
    return json.loads((folder / "manifest.json").read_text())["mean"]


@pytest.mark.parametrize("name, ds", [("vrnn-tiny", "chunks"), ("wavegan-tiny", "clips")])
def test_resume_continues_exactly(name, ds, data, tmp_path):
    sets = ["--set", "batch_size=4", "--set", "sample_seconds=0"] + (["--set", "n_critic=2"] if "wavegan" in name else [])
    common = ["--checkpoint-every", 3, "--log-every", 1, *sets]
    assert train(name, data / ds, tmp_path / "straight", "--steps", 6, *common) == 0
    assert train(name, data / ds, tmp_path / "split", "--steps", 3, *common) == 0
    assert train(name, data / ds, tmp_path / "split", "--steps", 3, *common) == 1  # no silent overwrite
    assert train(name, data / ds, tmp_path / "split", "--steps", 6, "--resume", *common) == 0
    straight, _ = losses(tmp_path / "straight")
    resumed, info = losses(tmp_path / "split")
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed == straight  # bit for bit, the steps after the resume included
    a, _ = ckpt.load_model(tmp_path / "straight")
    b, _ = ckpt.load_model(tmp_path / "split")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_resume_with_a_new_learning_rate_uses_it_and_records_it(data, tmp_path):
    """The optimiser state restored on resume carries the old rate; `--set lr=` on resume must still win."""
    common = ["--checkpoint-every", 2, "--log-every", 1, "--set", "batch_size=4", "--set", "sample_seconds=0"]
    assert train("vrnn-tiny", data / "chunks", tmp_path / "run", "--steps", 2, *common) == 0
    assert train("vrnn-tiny", data / "chunks", tmp_path / "run", "--steps", 4, "--resume", *common,
                 "--set", "lr=2.5e-5") == 0
    _, info = losses(tmp_path / "run")
    assert info["optimizers"]["model"]["param_groups"][0]["lr"] == pytest.approx(2.5e-5)
    (event,) = info["history"]["events"]
    assert event["event"] == "lr" and event["step"] == 2 and event["lr"] == pytest.approx(2.5e-5)
    assert event["from"] == pytest.approx(get_config("vrnn-tiny").lr)
    # resuming again with the same rate is no new event
    assert train("vrnn-tiny", data / "chunks", tmp_path / "run", "--steps", 6, "--resume", *common,
                 "--set", "lr=2.5e-5") == 0
    _, info = losses(tmp_path / "run")
    assert len(info["history"]["events"]) == 1 and info["step"] == 6


def test_a_wavegan_recovered_from_its_graph_trains_on_with_a_fresh_critic(data, tmp_path):
    """A preset whose run is gone: `export.recover` rebuilds the generator from the shipped graph (the critic never
    ships, so it is fresh), and `train --init-from ... --critic-only-steps N` holds the generator still for N steps
    while the new critic learns, then trains both."""
    from export.onnx_export import export_model
    from export.recover import recover, save_recovered

    sets = ["--set", "batch_size=4", "--set", "n_critic=2"]
    assert train("wavegan-tiny", data / "clips", tmp_path / "lost", "--steps", 2, "--checkpoint-every", 2, *sets) == 0
    trained, lost = ckpt.load_model(tmp_path / "lost")
    export_model(trained, tmp_path / "shipped.onnx", info=lost)
    model, info = recover(tmp_path / "shipped.onnx")
    save_recovered(model, info, tmp_path / "recovered")
    generator = {k: v for k, v in trained.state_dict().items() if k.startswith("generator.")}
    critic = {k: v for k, v in trained.state_dict().items() if k.startswith("critic.")}

    def weights(run):
        return ckpt.load_model(run)[0].state_dict()

    got = weights(tmp_path / "recovered")
    assert all(torch.equal(got[k], v) for k, v in generator.items())
    assert not all(torch.equal(got[k], v) for k, v in critic.items())  # the graph has no critic to give
    common = ["--checkpoint-every", 2, "--log-every", 1, "--init-from", tmp_path / "recovered", "--critic-only-steps", 2,
              *sets]
    assert train("wavegan-tiny", data / "clips", tmp_path / "on", "--steps", 2, *common) == 0
    _, info = losses(tmp_path / "on")
    assert info["init_from"]["step"] == 2 and info["init_from"]["recovered_from"] == str(tmp_path / "shipped.onnx")
    waited = weights(tmp_path / "on")
    assert all(torch.equal(waited[k], v) for k, v in generator.items())  # the generator waited ...
    assert not all(torch.equal(waited[k], got[k]) for k in critic)  # ... while the critic learned
    history, _ = losses(tmp_path / "on", "generator_loss")
    assert len(history) == 2 and all(math.isfinite(v) for _, v in history)  # still measured for the log
    assert train("wavegan-tiny", data / "clips", tmp_path / "on", "--steps", 3, "--resume", *common[:4],
                 "--critic-only-steps", 2, *sets) == 0
    moved = weights(tmp_path / "on")
    assert not all(torch.equal(moved[k], v) for k, v in generator.items())  # step 3: the generator trains
    _, info = losses(tmp_path / "on")
    assert info["init_from"]["step"] == 2  # kept across the resume, for the model card
    # a new run only; and only a WaveGAN has a critic to wait for
    assert train("wavegan-tiny", data / "clips", tmp_path / "on", "--steps", 4, *common) == 1
    assert train("vrnn-tiny", data / "chunks", tmp_path / "v", "--steps", 1, "--critic-only-steps", 1) == 1


def test_choose_checkpoint_ranks_a_runs_checkpoints_on_the_validation_split(data, fixtures_dir, tmp_path):
    """scripts/choose_checkpoint.py: every checkpoint exported as shipped, scored on the validation split over two
    seeds, the lowest mean chosen; scores kept in --json are reused, so a later call only scores new checkpoints."""
    run = tmp_path / "run"
    assert train("vrnn-tiny", data / "chunks", run, "--steps", 4, "--checkpoint-every", 2, "--set",
                 "sample_seconds=0.1") == 0
    scoring = tmp_path / "scoring"  # the fixture's 8 s as the validation split (the tiny set's own is 0.5 s)
    scoring.mkdir()
    (scoring / "manifest.json").write_text((data / "chunks" / "manifest.json").read_text())
    audio, _ = sf.read(fixtures_dir / "piano.flac", dtype="int16")
    np.save(scoring / "valid.npy", audio.reshape(1, -1))
    table = tmp_path / "scores.json"
    cmd = [PY, str(ROOT / "scripts" / "choose_checkpoint.py"), str(run), "--data", str(scoring), "--seconds", "2",
           "--json", str(table), "--export-args=--no-verify"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(table.read_text())["checkpoints"]
    assert sorted(rows) == ["step_00000002", "step_00000004"]
    for row in rows.values():
        assert len(row["scores"]) == 2 and row["mean"] == pytest.approx(np.mean(row["scores"]), abs=1e-3)
        assert 0 < row["mean"] < 3
    best = min(rows, key=lambda k: rows[k]["mean"])
    assert f"chosen {best}" in done.stdout
    other = next(k for k in rows if k != best)
    saved = json.loads(table.read_text())
    saved["checkpoints"][other]["mean"] = -1.0  # a kept score is read back, not recomputed
    table.write_text(json.dumps(saved))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"chosen {other}" in done.stdout, done.stdout + done.stderr


def make_trainer(data_dir, out, *argv):
    p = argparse.ArgumentParser()
    train_mod.add_arguments(p)
    args = p.parse_args(["vrnn-tiny", "--data", str(data_dir), "--out", str(out), "--threads", "1", *map(str, argv)])
    return train_mod.Trainer(args)


def test_nan_and_exploding_losses_roll_back_and_the_run_completes(data, tmp_path):
    trainer = make_trainer(data / "chunks", tmp_path / "run", "--steps", 40, "--checkpoint-every", 20,
                           "--snapshot-every", 5, "--log-every", 1, "--set", "sample_seconds=0")
    model, real = trainer.model, trainer.model.losses
    calls = {"n": 0}

    def sabotaged(x, state=None):
        calls["n"] += 1
        metrics, state = real(x, state)
        if calls["n"] == 12:  # a NaN (e.g. a log of zero) ...
            metrics["loss"] = metrics["loss"] * float("nan")
        if calls["n"] == 35:  # ... and an explosion: finite, but a thousand times the usual loss
            metrics["loss"] = metrics["loss"] * 1000.0
        return metrics, state

    model.losses = sabotaged
    assert trainer.fit() == 0
    history, info = losses(tmp_path / "run")
    events = info["history"]["events"]
    assert [e["event"] for e in events] == ["rollback", "rollback"]
    assert events[0]["to_step"] == 10 and events[0]["loss"] is None  # back to the last snapshot
    assert events[1]["loss"] > 100
    lr = trainer.config.lr
    assert [e["lr"] for e in events] == [lr / 2, lr / 4]
    assert info["optimizers"]["model"]["param_groups"][0]["lr"] == lr / 4  # the lower rate is kept and saved
    assert info["step"] == 40 and [s for s, _ in history] == list(range(1, 41))
    assert all(math.isfinite(v) and v < 100 for _, v in history)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_run_that_only_explodes_gives_up_with_one_sentence(data, tmp_path):
    trainer = make_trainer(data / "chunks", tmp_path / "run", "--steps", 10, "--max-rollbacks", 3,
                           "--set", "sample_seconds=0")
    real = trainer.model.losses

    def always_nan(x, state=None):
        metrics, state = real(x, state)
        metrics["loss"] = metrics["loss"] * float("nan")
        return metrics, state

    trainer.model.losses = always_nan
    with pytest.raises(train_mod.UserError) as e:
        trainer.fit()
    assert "exploded 3 times after step 0" in str(e.value)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_sigterm_checkpoints_and_exits_cleanly(data, tmp_path):
    run = tmp_path / "run"
    cmd = [PY, "-m", "neuralinst", "train", "vrnn-tiny", "--data", str(data / "chunks"), "--out", str(run),
           "--threads", "1", "--steps", "100000", "--checkpoint-every", "2", "--set", "sample_seconds=0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = run / "checkpoints" / "latest"
    deadline = time.monotonic() + 60
    while not latest.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert latest.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM" in err and "Traceback" not in err
    folder, info = ckpt.read_checkpoint(run)
    assert info["step"] >= 2 and folder.name == ckpt.step_dir_name(info["step"])
    assert info["history"]["valid"][-1]["step"] == info["step"]  # the exit checkpoint, not just the periodic one


def test_ddp_two_gloo_processes(data, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(ROOT / ".venv" / "bin" / "torchrun"), "--nproc-per-node", "2", "--standalone", "-m", "neuralinst",
           "train", "vrnn-tiny", "--data", str(data / "chunks"), "--out", str(run), "--device", "cpu", "--threads", "1",
           "--steps", "4", "--checkpoint-every", "2", "--log-every", "1", "--set", "batch_size=4",
           "--set", "sample_seconds=0.05"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    history, info = losses(run)
    assert info["world_size"] == 2 and len(info["rng"]) == 2 and info["rng"][0] != info["rng"][1]
    assert [s for s, _ in history] == list(range(1, 5)) and all(math.isfinite(v) for _, v in history)
    assert (run / "samples" / "step_4.wav").exists()  # written once, by rank 0
    # the two ranks drew different chunks of the global batch
    b0 = train_mod.Batches(np.zeros((14, 1, 8000), np.int16), 8000, 4, 1, rank=0, world=2)
    b1 = train_mod.Batches(np.zeros((14, 1, 8000), np.int16), 8000, 4, 1, rank=1, world=2)
    assert not set(b0.indices(0)) & set(b1.indices(0))


def test_pruning_keeps_the_newest_and_the_best(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    for step, best in ((1, False), (2, True), (3, False), (4, False)):
        ckpt.save_checkpoint(tmp_path, step, model, {"model": opt}, {"config": {}}, keep=2, best=best)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["best", "latest", "step_00000002", "step_00000003",
                                                      "step_00000004"]
    assert ckpt.resolve(tmp_path).name == "step_00000004"
    assert ckpt.resolve(root / "best").name == "step_00000002"
    # optimiser state round-trips without pickle
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    folder, info = ckpt.read_checkpoint(tmp_path)
    ckpt.load_optimizers({"model": fresh}, folder, info)
    a, b = opt.state_dict(), fresh.state_dict()
    assert all(torch.equal(a["state"][0][k], b["state"][0][k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert b["param_groups"][0]["betas"] == list(a["param_groups"][0]["betas"])
