"""The terminal UI in its own process, so that it never holds the audio interpreter's lock.

The audio callback runs Python (sounddevice calls it through CFFI), so anything else in its interpreter that holds
the GIL delays it. textual's compositor held it ~45 % of the time in a 10-minute endurance run (py-spy `--gil`), in
stretches long enough to starve a 10.7 ms ring: 11 underruns in 10 minutes with every other cure applied. So
`neuralinst play` keeps the engine, MIDI input, mapper and switcher in its own process and runs the textual app in a
child process that sees them through small stand-ins (`RemoteEngine`, `RemotePerformance`, `RemoteMidi`) with the
same attributes the app reads in-process.

The protocol is pull only: the UI asks, the engine's process answers, one pipe. The UI's link thread asks for a
`Snapshot` at `SNAPSHOT_HZ`; key presses send commands. The engine's side (`UiHost`) never sends anything unasked,
so it never blocks on a UI that stopped reading; its one thread spends ~0.1 ms of GIL per snapshot.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from multiprocessing.connection import Connection
from typing import Any

from instrument.errors import UserError

SNAPSHOT_HZ = 30  # twice the UI's refresh rate: a snapshot is never more than one UI frame old
RPC_TIMEOUT = 10.0  # seconds the UI waits for a reply (starting a recording opens a file)
MIDI_RECENT = 6  # MIDI log lines the UI shows


# --- what crosses the pipe ---------------------------------------------------------------------------------------
@dataclass
class PresetView:
    name: str
    kind: str
    mode: str


@dataclass
class Snapshot:
    """Everything the UI draws, read in the engine's process at one moment (plain data, pickled)."""
    stats: Any  # EngineStats
    preset: PresetView
    generation: int  # bumps at each preset switch (the UI then rebuilds its parameter list)
    specs: list | None  # the parameters' ParamSpecs: only when `generation` changed since the last ask
    values: dict[str, float]
    cc: dict[str, list[int]]
    pickups: dict[str, float | None]
    learning: str | None
    switching: str
    switch_error: str
    save_error: str
    saved_to: str | None
    model: dict[str, Any]  # describe_model()
    output: str
    midi: dict[str, Any] | None  # status, stats, recent; None without a MIDI input


def describe_model(engine) -> dict[str, Any]:
    """The playing model in the UI's words: what runs it, its sample rate, why it is not on a faster path."""
    model = getattr(getattr(engine, "_program", None), "model", None)
    if model is None:
        return {"label": "", "sample_rate": None, "note": ""}
    meta = getattr(model, "meta", None)
    if getattr(model, "backend", "onnx") == "native":
        label = "native C loop"
    else:
        providers = getattr(model, "providers", None) or ["CPUExecutionProvider"]
        label = "onnx " + providers[0].removesuffix("ExecutionProvider")
    return {"label": label, "sample_rate": getattr(meta, "sample_rate", None),
            "note": getattr(model, "backend_note", None) or ""}


def describe_midi(midi) -> dict[str, Any] | None:
    if midi is None:
        return None
    st = midi.stats
    return {"status": list(midi.status()),
            "stats": {"malformed": st.malformed, "sysex": st.sysex, "flood_dropped": st.flood_dropped},
            "recent": [(t, port, str(what)) for t, port, what in list(midi.recent)[-MIDI_RECENT:]]}


# --- the engine's side -------------------------------------------------------------------------------------------
class UiHost:
    """Runs the UI process and answers it from the engine's process.

    `start()` spawns the UI (a fresh interpreter: no threads or locks inherited from this one) and a link thread
    here; `wait()` returns the UI's exit code. If the UI dies, the engine keeps what it recorded: `close()` (and
    `Engine.stop()` after it) finish the file, and `recorded` lists every file the UI finished or left running.
    """

    def __init__(self, engine, performance, midi=None, record_dir: str | Path = ".", output_name: str = "",
                 headless: dict | None = None):
        self.engine, self.performance, self.midi = engine, performance, midi
        self.options = {"record_dir": str(record_dir), "output_name": output_name, "headless": headless}
        self.recorded: list[Path] = []
        self.requests = 0
        self.exitcode: int | None = None
        self._seen_generation: int | None = None
        self._generation = 0
        self._proc = None
        self._conn = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        performance.listeners.append(self._switched)

    def _switched(self, _preset) -> None:
        self._generation += 1

    def start(self) -> "UiHost":
        # A plain child interpreter (not multiprocessing's spawn, which points the child's stdin at /dev/null:
        # the UI needs the terminal), with one end of a socket pair as its link.
        here, there = socket.socketpair()
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "instrument.uiproc", str(there.fileno()), json.dumps(self.options)],
            pass_fds=[there.fileno()], env=env)
        there.close()
        self._conn = Connection(here.detach())
        self._thread = threading.Thread(target=self._serve, name="ui-host", daemon=True)
        self._thread.start()
        return self

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            self.exitcode = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._thread.join(2.0)
        return self.exitcode

    def close(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._conn is not None:
            self._conn.close()
        if self._switched in self.performance.listeners:
            self.performance.listeners.remove(self._switched)
        # A UI that died mid-take leaves the recording running in the engine: the engine's stop finishes the file.
        rec = self.engine.stats().recording
        if rec and Path(rec) not in self.recorded:
            self.recorded.append(Path(rec))

    def _serve(self) -> None:
        conn = self._conn
        while not self._stop.is_set():
            try:
                if not conn.poll(0.2):
                    if self._proc.poll() is not None:
                        return
                    continue
                rid, op, args = conn.recv()
            except (EOFError, OSError):
                return  # the UI exited (or was killed): wait() reports how
            self.requests += 1
            try:
                result = ("ok", self._handle(op, args))
            except UserError as e:
                result = ("error", str(e))
            except Exception as e:  # a bug on this side must not kill the link (the UI shows it)
                result = ("error", f"{type(e).__name__}: {e}")
            if rid is not None:
                try:
                    conn.send((rid, *result))
                except (BrokenPipeError, OSError):
                    return

    def _handle(self, op: str, args: tuple):
        perf = self.performance
        if op == "snapshot":
            return self.snapshot()
        if op == "post":
            return self.engine.post(args[0])
        if op == "nudge":
            return perf.bank.nudge(*args)
        if op == "learn":
            return perf.mapper.learn(args[0])
        if op == "cancel_learn":
            return perf.mapper.cancel_learn()
        if op == "all_notes_off":
            return perf.mapper.all_notes_off()
        if op == "switch_step":
            return perf.switcher.step(args[0])
        if op == "switch_name":
            return perf.switcher.select_name(args[0])
        if op == "preset_names":
            return perf.switcher.names()
        if op == "save_as":
            return str(perf.save_as(args[0]))
        if op == "start_recording":
            return str(self.engine.start_recording(args[0]))
        if op == "stop_recording":
            path = self.engine.stop_recording()
            if path:
                self.recorded.append(Path(path))
            return None if path is None else str(path)
        raise UserError(f"the UI asked for an unknown operation {op!r}.")

    def snapshot(self) -> Snapshot:
        perf, bank, mapper, sw = self.performance, self.performance.bank, self.performance.mapper, \
            self.performance.switcher
        generation = self._generation
        fresh = generation != self._seen_generation
        self._seen_generation = generation
        names = list(bank.names)
        return Snapshot(
            stats=self.engine.stats(), preset=PresetView(perf.preset.name, perf.preset.kind, perf.preset.mode),
            generation=generation, specs=[bank.specs[n] for n in names] if fresh else None,
            values=dict(bank.values),
            cc={n: mapper.mapping.cc_numbers(n) for n in names}, pickups={n: mapper.pickup(n) for n in names},
            learning=mapper.learning, switching=sw.switching, switch_error=sw.error, save_error=perf.save_error,
            saved_to=None if perf.saved_to is None else str(perf.saved_to), model=describe_model(self.engine),
            output=str(self.engine.config.output), midi=describe_midi(self.midi))


# --- the UI's side -----------------------------------------------------------------------------------------------
class Link:
    """The UI's end of the pipe: a thread that keeps the newest Snapshot, and calls that wait for their reply."""

    def __init__(self, conn, on_snapshot=None):
        self.conn = conn
        self.latest: Snapshot | None = None
        self.on_snapshot = on_snapshot
        self.on_lost = None  # called once, on the link thread, when the engine's process has gone
        self.lost = False
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()  # the app's thread and the link thread both send
        self._replies: dict[int, tuple] = {}
        self._replied = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ui-link", daemon=True)

    def start(self) -> "Link":
        self.call("snapshot")  # the first picture before the app draws
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def tell(self, op: str, *args) -> None:
        """Fire and forget (key presses: the next snapshot shows their effect)."""
        self._send((None, op, args))

    def call(self, op: str, *args, timeout: float = RPC_TIMEOUT):
        rid = next(self._ids)
        self._send((rid, op, args))
        if not self._thread.is_alive():  # before start(): read the reply here
            while True:
                got = self.conn.recv()
                self._deliver(got)
                if got[0] == rid:
                    break
        deadline = time.monotonic() + timeout
        with self._replied:
            while rid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.lost:
                    raise UserError("the engine did not answer the UI.")
                self._replied.wait(min(left, 0.2))
            status, value = self._replies.pop(rid)
        if status == "error":
            raise UserError(value)
        return value

    def _send(self, msg) -> None:
        try:
            with self._send_lock:
                self.conn.send(msg)
        except (BrokenPipeError, OSError):
            self._lose()

    def _lose(self) -> None:
        first, self.lost = not self.lost, True
        if first and self.on_lost is not None and not self._stop.is_set():
            self.on_lost()

    def _deliver(self, reply) -> None:
        rid, status, value = reply
        if status == "ok" and isinstance(value, Snapshot):
            self.latest = value
            if self.on_snapshot is not None:
                self.on_snapshot(value)
        with self._replied:
            self._replies[rid] = (status, value)
            self._replied.notify_all()

    def _run(self) -> None:
        period = 1.0 / SNAPSHOT_HZ
        asked: int | None = None
        next_ask = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if asked is None and now >= next_ask:
                asked = next(self._ids)
                self._send((asked, "snapshot", ()))
                next_ask = now + period
            try:
                if not self.conn.poll(max(0.0, min(period, next_ask - now)) if asked is None else period):
                    continue
                reply = self.conn.recv()
            except (EOFError, OSError):
                self._lose()
                return
            self._deliver(reply)
            if reply[0] == asked:
                with self._replied:
                    self._replies.pop(asked, None)
                asked = None


class RemoteBank:
    """The parameter bank as the UI sees it: values from the snapshots; a nudge moves the value here at once (so
    the bar follows the key without waiting a frame) and asks the engine's bank to make the same move."""

    def __init__(self, link: Link):
        from instrument.mapping import ParameterBank

        self.link = link
        self._bank = ParameterBank([], post=lambda _e: None)

    def update(self, snap: Snapshot) -> None:
        if snap.specs is not None:
            self._bank.replace(snap.specs, snap.values)
        else:
            self._bank.values.update({k: v for k, v in snap.values.items() if k in self._bank.specs})

    names = property(lambda self: self._bank.names)
    specs = property(lambda self: self._bank.specs)
    values = property(lambda self: self._bank.values)

    def __contains__(self, name: str) -> bool:
        return name in self._bank

    def get(self, name: str) -> float:
        return self._bank.get(name)

    def unit(self, name: str) -> float:
        return self._bank.unit(name)

    def nudge(self, name: str, steps: float, per_step: float = 1 / 64) -> float | None:
        self.link.tell("nudge", name, steps, per_step)
        return self._bank.nudge(name, steps, per_step)


class RemoteMapping:
    def __init__(self, mapper: "RemoteMapper"):
        self.mapper = mapper

    def cc_numbers(self, name: str) -> list[int]:
        snap = self.mapper.link.latest
        return list(snap.cc.get(name, [])) if snap else []


class RemoteMapper:
    def __init__(self, link: Link):
        self.link = link
        self.mapping = RemoteMapping(self)
        self._learning: str | None = None
        self._asked_at = 0.0

    @property
    def learning(self) -> str | None:
        snap = self.link.latest
        # Until the engine's side has seen the request, show what was asked (the UI's own action).
        if time.monotonic() - self._asked_at < 0.5:
            return self._learning
        return snap.learning if snap else None

    def pickup(self, name: str) -> float | None:
        snap = self.link.latest
        return snap.pickups.get(name) if snap else None

    def learn(self, name: str) -> None:
        self._learning, self._asked_at = name, time.monotonic()
        self.link.tell("learn", name)

    def cancel_learn(self) -> None:
        self._learning, self._asked_at = None, time.monotonic()
        self.link.tell("cancel_learn")

    def all_notes_off(self) -> None:
        self.link.tell("all_notes_off")


class RemoteSwitcher:
    def __init__(self, link: Link):
        self.link = link

    switching = property(lambda self: self.link.latest.switching if self.link.latest else "")
    error = property(lambda self: self.link.latest.switch_error if self.link.latest else "")

    def step(self, delta: int) -> None:
        self.link.tell("switch_step", int(delta))

    def select_name(self, name: str) -> None:
        self.link.tell("switch_name", name)

    def names(self) -> list[str]:
        return self.link.call("preset_names")


class RemotePerformance:
    """`instrument.mapping.Performance` as the UI process sees it."""

    def __init__(self, link: Link):
        self.link = link
        self.bank = RemoteBank(link)
        self.mapper = RemoteMapper(link)
        self.switcher = RemoteSwitcher(link)
        self.listeners: list = []
        self._generation: int | None = None

    def update(self, snap: Snapshot) -> None:  # on the link thread
        switched = self._generation is not None and snap.generation != self._generation
        self._generation = snap.generation
        self.bank.update(snap)
        if switched:
            for fn in list(self.listeners):
                fn(snap.preset)

    preset = property(lambda self: self.link.latest.preset)
    save_error = property(lambda self: self.link.latest.save_error)
    saved_to = property(lambda self: self.link.latest.saved_to)

    def save_as(self, name: str) -> str:
        return self.link.call("save_as", name)


@dataclass
class _Config:
    output: str = ""


class RemoteEngine:
    """The engine as the UI process sees it: stats from the newest snapshot, events and recording over the pipe."""

    def __init__(self, link: Link):
        self.link = link
        self.config = _Config(link.latest.output)

    def stats(self):
        return self.link.latest.stats

    def model_info(self) -> dict[str, Any]:
        return self.link.latest.model

    def post(self, event) -> None:
        self.link.tell("post", event)

    def start_recording(self, path) -> Path:
        return Path(self.link.call("start_recording", str(path)))

    def stop_recording(self) -> Path | None:
        path = self.link.call("stop_recording")
        return None if path is None else Path(path)


class RemoteMidi:
    def __init__(self, link: Link):
        self.link = link

    def _midi(self) -> dict:
        return self.link.latest.midi or {"status": [], "stats": {}, "recent": []}

    def status(self) -> list[tuple[str, str]]:
        return self._midi()["status"]

    @property
    def stats(self):
        return _Counts(**self._midi()["stats"])

    @property
    def recent(self) -> list:
        return self._midi()["recent"]


@dataclass
class _Counts:
    malformed: int = 0
    sysex: int = 0
    flood_dropped: int = 0


def ui_main(conn, options: dict) -> None:
    """The UI process: build the stand-ins, run the app (in the terminal, or headless for a benchmark/test)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(0, os.getpriority(os.PRIO_PROCESS, 0)))  # never above the audio
    except OSError:
        pass
    from instrument import tui

    link = Link(conn)
    performance = RemotePerformance(link)
    link.on_snapshot = performance.update  # every snapshot, the first included (it alone carries the parameters)
    link.start()
    midi = RemoteMidi(link) if link.latest.midi is not None else None
    app = tui.InstrumentApp(RemoteEngine(link), performance, midi, record_dir=options.get("record_dir") or ".",
                            output_name=options.get("output_name") or "")
    # The engine's process gone (killed, crashed): nothing to play or show; leave the terminal as it was.
    def lost() -> None:
        try:
            app.call_from_thread(app.exit, 3)
        except RuntimeError:  # noticed on the app's own thread (a key press found the pipe broken)
            app.exit(3)

    link.on_lost = lost
    headless = options.get("headless")
    try:
        if headless:
            asyncio.run(_headless(app, headless))
        else:
            app.run()
    finally:
        link.close()
    raise SystemExit(int(app.return_code or 0))


async def _headless(app, plan: dict) -> None:
    """For benchmarks and tests: run the app without a terminal, press `plan["keys"]`, stay `plan["seconds"]`."""
    async with app.run_test(size=tuple(plan.get("size", (120, 40)))) as pilot:
        for key in plan.get("keys", ()):
            await pilot.press(key)
            await pilot.pause(plan.get("key_gap", 0.05))
        end = time.monotonic() + float(plan.get("seconds", 0.0))
        while time.monotonic() < end:
            await pilot.pause(0.25)
        if plan.get("quit", True):
            await pilot.press("ctrl+q")
            await pilot.pause(0.2)
            if app.is_running and app.screen_stack and type(app.screen).__name__ == "ConfirmQuit":
                await pilot.press("y")
                await pilot.pause(0.2)


if __name__ == "__main__":  # started by UiHost: python -m instrument.uiproc FD OPTIONS_JSON
    # Through the package's module, not this `__main__` copy: unpickled snapshots are instrument.uiproc classes.
    from instrument import uiproc

    uiproc.ui_main(Connection(int(sys.argv[1])), json.loads(sys.argv[2]))
