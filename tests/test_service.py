"""Days unattended (issue 24, item 7): start-up without a microphone, one instance only, systemd's notify protocol and
watchdog fed from the render loop (a fake NOTIFY_SOCKET and a supervisor that acts as systemd does), SIGTERM, the
rotated log file, the systemd unit checked with ``systemd-analyze verify``, and a taken OSC port in the gallery
preset. ``run.py live`` runs as a subprocess where that is how a user or systemd would start it."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from installation.audio_in import WAIT_RATE, SoundDeviceInput
from installation.live import LiveLoop
from installation.service import (
    AlreadyRunning,
    InstanceLock,
    Service,
    ServiceConfig,
    notify,
    watchdog_interval_s,
)
from tests.alsa_standin import alsa_available, write_asoundrc
from tests.test_live import FakeGenerator, config

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "avgan-live.service"


class NotifySocket:
    """A fake ``$NOTIFY_SOCKET``: a bound AF_UNIX datagram socket collecting what the service sends, timestamped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float, until: str | None = None) -> list[tuple[float, str]]:
        """Receive for ``seconds`` (or until a message containing ``until`` arrives); returns the new messages."""
        new: list[tuple[float, str]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            new.append((time.monotonic(), data.decode()))
            if until is not None and until in new[-1][1]:
                break
        self.messages += new
        return new

    def close(self) -> None:
        self.sock.close()


def preset(tmp_path: Path, body: str = "", extends: str = "gallery", service: str = "") -> Path:
    """A preset for a subprocess run: ``extends`` plus the dummy display, a small canvas, no sound, the log file in
    ``tmp_path/logs``, ``service`` (more keys of that section) and ``body`` (other sections)."""
    path = tmp_path / "test.yaml"
    path.write_text(
        f"extends: {ROOT / 'presets' / (extends + '.yaml')}\n"
        "display: {driver: dummy, fullscreen: false, size: [320, 180], windowed_size: [320, 180], vsync: false}\n"
        "sound: {enabled: false}\n"
        f"service: {{log_file: {tmp_path / 'logs' / 'live.log'}{', ' + service if service else ''}}}\n" + body
    )
    return path


def live_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update({"AVGAN_RUN_DIR": str(tmp_path / "run"), "SDL_VIDEODRIVER": "dummy", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def start_live(tmp_path: Path, preset_path: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "run.py", "live", "--preset", str(preset_path), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# -- pieces -----------------------------------------------------------------------------------------------------


def test_notify_protocol_and_watchdog_environment(tmp_path: Path) -> None:
    fake = NotifySocket(tmp_path / "notify.sock")
    try:
        assert notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": str(fake.path)})
        assert [m for _, m in fake.collect(0.5, until="READY")] == ["READY=1\nSTATUS=up"]
    finally:
        fake.close()
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"avgan-test-{os.getpid()}"
    abstract.bind("\0" + name)
    abstract.settimeout(2)
    try:
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})  # the abstract namespace systemd may use
        assert abstract.recv(100) == b"WATCHDOG=1"
    finally:
        abstract.close()
    assert not notify("READY=1", {})  # not under systemd: nothing to do
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})  # logged, never raised
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # meant for another
    assert watchdog_interval_s({}) is None and watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None


def test_instance_lock_names_the_holder_and_dies_with_it(tmp_path: Path) -> None:
    lock = InstanceLock("live", tmp_path).acquire()
    with pytest.raises(
        AlreadyRunning, match=rf"another instance is already running \(pid {os.getpid()}, running since"
    ):
        InstanceLock("live", tmp_path).acquire()
    lock.release()
    InstanceLock("live", tmp_path).acquire().release()
    # a holder that is killed (no clean-up at all) does not block the next start
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from installation.service import InstanceLock; InstanceLock('live', __import__('pathlib').Path({str(tmp_path)!r})).acquire(); print('held', flush=True); import time; time.sleep(60)"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}"):
            InstanceLock("live", tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(10)
    InstanceLock("live", tmp_path).acquire().release()


def test_log_file_rotates_as_configured(tmp_path: Path) -> None:
    cfg = ServiceConfig(log_file=str(tmp_path / "logs" / "live.log"), log_max_mb=0.01, log_backups=2)
    with Service("live", cfg, env={}) as service:
        assert service.log_path == tmp_path / "logs" / "live.log"
        for i in range(400):
            logging.getLogger("installation.test").warning("line %04d %s", i, "x" * 60)
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["live.log", "live.log.1", "live.log.2"]  # two backups kept, older ones deleted
    assert all((tmp_path / "logs" / f).stat().st_size <= 10.5 * 1024 for f in files)
    assert "line 0399" in (tmp_path / "logs" / "live.log").read_text()
    assert not any(isinstance(h, logging.handlers.RotatingFileHandler) for h in logging.getLogger().handlers)
    with pytest.raises(Exception, match="service.log_file: cannot write"):
        Service("live", ServiceConfig(log_file="/proc/avgan/live.log"), env={}).__enter__()


# -- the render loop feeds the watchdog -----------------------------------------------------------------------


def test_a_stalled_render_loop_stops_the_watchdog_pings(tmp_path: Path) -> None:
    """In-process: the live loop (file input, fake generator) with the service's per-frame callback; WATCHDOG_USEC
    of 0.4 s asks for a ping every 0.2 s. At frame 40 the render loop stalls for 1.5 s while every other thread (the
    audio player, the generator worker) keeps running: the pings stop for the whole stall, i.e. systemd (WatchdogSec
    0.4 s) would kill and restart the process; before and after it they come every ~0.2 s."""
    from installation.audio_in import FileInput
    from tests.test_live import speechy

    fake = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(fake.path), "WATCHDOG_USEC": "400000"}
    stall = {"at": None}

    try:
        with Service("live", ServiceConfig(), env=env) as service:

            def on_frame(loop: LiveLoop, t: float, canvas: np.ndarray) -> None:
                service.frame(loop, t, canvas)
                if loop.frames == 40:
                    stall["at"] = time.monotonic()
                    time.sleep(1.5)  # a hung driver call in the render loop

            loop = LiveLoop(
                config(tmp_path, duration_s=5.0, report=None),  # 5 s: room for a VM hiccup
                generator=FakeGenerator(),
                audio_input=FileInput(speechy(7.0), 16000),
                on_frame=on_frame,
            )
            service.on_stop(loop.stop)
            import threading

            received: list[tuple[float, str]] = []
            collector = threading.Thread(target=lambda: received.extend(fake.collect(8.0, until="STOPPING")))
            collector.start()
            report = loop.run()
        collector.join(10)
    finally:
        fake.close()
    assert received[0][1].startswith("READY=1\nSTATUS=running: ")
    pings = [t for t, m in received if m == "WATCHDOG=1"]
    assert received[-1][1] == "STOPPING=1" and report["frames"] > 40  # (at any frame rate this machine allows)
    assert stall["at"] is not None
    gaps = np.diff(pings)
    longest = int(np.argmax(gaps))
    assert gaps[longest] >= 1.4  # nothing during the stall: systemd's 0.4 s watchdog would have fired
    assert pings[longest] <= stall["at"] + 0.05 <= pings[longest + 1] - 1.4
    others = np.delete(gaps, longest)
    assert len(others) >= 6 and np.median(others) == pytest.approx(0.2, abs=0.1)  # every half interval otherwise


def test_systemd_unit_verifies() -> None:
    """``systemd-analyze verify`` on the shipped user unit (it also checks that ExecStart, resolved through %Y,
    is an executable file), and the settings the gallery relies on."""
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "WatchdogSec=30", "ExecStart=%Y/avgan-live"):
        assert f"\n{line}\n" in text, line
    assert os.access(UNIT.parent / "avgan-live", os.X_OK)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/avgan-xdg-{os.getuid()}")
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    done = subprocess.run([analyze, "--user", "verify", str(UNIT)], env=env, capture_output=True, text=True, timeout=60)
    if "Failed to initialize manager" in done.stderr:
        done = subprocess.run([analyze, "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


# -- run.py live as systemd / a user would start it ------------------------------------------------------------


def test_second_instance_refuses_and_systemd_sees_ready_watchdog_restart_and_stop(tmp_path: Path) -> None:
    """The gallery preset (single instance, log file) under a fake systemd: READY=1 and WATCHDOG=1 from the first
    instance; a second ``run.py live`` exits 2 at once naming the first; a stalled process (SIGSTOP) misses its
    pings, and the supervisor does what WatchdogSec + Restart=on-failure do (SIGABRT, start again: READY=1
    again); ``systemctl stop`` (SIGTERM) ends it cleanly: STOPPING=1, exit 0, the report finalised."""
    fake = NotifySocket(tmp_path / "notify.sock")
    path = preset(tmp_path, "osc: {port: 0, oscquery_port: 0, feedback_port: 9}\n", extends="gallery")
    env = live_env(tmp_path, NOTIFY_SOCKET=str(fake.path), WATCHDOG_USEC="2000000")  # ping every 1 s
    report = tmp_path / "live.json"
    first = start_live(tmp_path, path, "--input", str(ROOT / "presets/demo/demo_speech.flac"), env=env)
    restarted = None
    try:
        ready = fake.collect(120, until="READY=1")
        assert ready and ready[-1][1].startswith("READY=1\nSTATUS=running: "), (ready, first.poll())
        pings = [t for t, m in fake.collect(3.5) if m == "WATCHDOG=1"]
        assert len(pings) >= 2 and all(0.5 < g < 1.6 for g in np.diff(pings))

        second = subprocess.run(
            [sys.executable, "run.py", "live", "--preset", str(path)],
            cwd=ROOT,
            env={k: v for k, v in env.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2
        assert (
            second.stderr.strip()
            .splitlines()[-1]
            .startswith(f"error: live: another instance is already running (pid {first.pid}, running since ")
        )
        assert "systemctl --user stop avgan-live" in second.stderr and first.poll() is None

        # the render loop stalls (SIGSTOP stands in for a hung driver): no ping for WatchdogSec = 2 s
        fake.collect(0.3)  # what was sent while the second instance ran
        first.send_signal(signal.SIGSTOP)
        quiet_from = time.monotonic()
        late = [t for t, m in fake.collect(2.5) if m == "WATCHDOG=1" and t > quiet_from + 0.1]
        assert late == []
        first.send_signal(signal.SIGABRT)  # systemd's watchdog action ...
        first.send_signal(signal.SIGCONT)
        assert first.wait(30) == -signal.SIGABRT and time.monotonic() - quiet_from >= 2.0
        restarted = start_live(  # ... and Restart=on-failure starts it again: the lock died with the process
            tmp_path, path, "--input", str(ROOT / "presets/demo/demo_speech.flac"), "--report", str(report), env=env
        )
        again = fake.collect(120, until="READY=1")
        assert again and again[-1][1].startswith("READY=1"), restarted.poll()
        assert [m for _, m in fake.collect(2.5) if m == "WATCHDOG=1"]

        restarted.send_signal(signal.SIGTERM)  # systemctl --user stop
        assert restarted.wait(60) == 0
        assert [m for _, m in fake.collect(2.0, until="STOPPING")][-1:] == ["STOPPING=1"]
    finally:
        for proc in (first, restarted):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=30)
        fake.close()
    data = json.loads(report.read_text())
    assert data["quit_reason"] == "SIGTERM" and data["frames"] > 10
    log_text = (tmp_path / "logs" / "live.log").read_text()
    assert "live: pid" in log_text and "single instance" in log_text and "SIGTERM: stopping" in log_text


@pytest.mark.skipif(not alsa_available(), reason="needs alsa-lib's configuration (/usr/share/alsa/alsa.conf)")
def test_no_microphone_at_start_waits_then_opens_it_when_plugged_in(tmp_path: Path) -> None:
    """``run.py live --input mic`` on a machine with no audio device (HOME without a .asoundrc: PortAudio lists
    nothing): it used to exit 2 ("default input device not found"); now it runs, idles, and retries with back-off
    (0.5, 1, 2, 2 s). After ~4 s a microphone appears (a .asoundrc defining an ALSA capture device that plays
    speech, tests/alsa_standin.py): the next retry re-scans PortAudio, opens it, and the voice drives the
    generator."""
    import soundfile as sf
    import soxr

    home = tmp_path / "home"
    home.mkdir()
    path = preset(
        tmp_path,
        "osc: {port: 0, oscquery: false, feedback: false}\n"
        "input: {source: mic, reconnect_min_s: 0.5, reconnect_max_s: 2.0}\n",
        extends="headless",
        service="single_instance: false",
    )
    report = tmp_path / "live.json"
    proc = start_live(
        tmp_path, path, "--duration", "14", "--report", str(report), env=live_env(tmp_path, HOME=str(home))
    )
    try:
        deadline = time.monotonic() + 120
        while not report.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # the first report is written once the loop runs
        time.sleep(4.0)
        voice, rate = sf.read(ROOT / "presets" / "demo" / "demo_speech.flac", dtype="float32")
        voice = voice.mean(axis=1) if voice.ndim == 2 else voice
        write_asoundrc(home, soxr.resample(voice, rate, WAIT_RATE))  # plugged in
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    data = json.loads(report.read_text())
    audio = data["audio"]
    events = [(kind, detail) for _, kind, detail in audio["events"]]
    failures = [detail for kind, detail in events if kind == "reopen_failed"]
    assert failures[0].startswith("the default input device not found") and "waiting for it" in failures[0]
    delays = [float(d.rsplit("next try in ", 1)[1].split()[0]) for d in failures]
    assert delays[:4] == [0.5, 1.0, 2.0, 2.0]  # back-off, capped at input.reconnect_max_s
    opened = [detail for kind, detail in events if kind == "opened"]
    assert opened and opened[0] == f"default @ {WAIT_RATE} Hz (found after waiting)"
    assert audio["rate"] == WAIT_RATE and audio["reconnects"] == 0
    assert data["generator"]["calls"] > 0  # the voice reached the generator
    assert data["frames"] > 20 and data["frame_errors"] == 0 and data["quit_reason"] == "duration reached"


def test_missing_microphone_shows_the_idle_picture_in_process(tmp_path: Path) -> None:
    """The same start without a microphone, in process with stand-ins for PortAudio's answers: the loop draws its
    no-audio picture every frame (the idle state of issue 24 item 3 appears here once merged) and reports the
    input as lost over OSC."""
    attempts: list[float] = []

    def no_device(device: Any) -> dict[str, Any]:
        raise ValueError("Error querying device -1")

    def no_stream(**kwargs: Any) -> Any:
        attempts.append(time.monotonic())
        raise OSError("PortAudioError: Error querying device -1")

    mic = SoundDeviceInput(
        None, backoff_s=0.1, backoff_max_s=0.4, stream_factory=no_stream, device_info=no_device, wait_for_device=True
    )
    assert mic.sample_rate == WAIT_RATE and mic.missing.startswith("the default input device not found")
    states, means = [], []

    def on_frame(loop: LiveLoop, t: float, canvas: np.ndarray) -> None:
        states.append(loop.input_state())
        means.append(float(canvas.mean()))

    loop = LiveLoop(config(tmp_path, duration_s=3.0), generator=FakeGenerator(), audio_input=mic, on_frame=on_frame)
    report = loop.run()
    assert report["frames"] >= 10 and report["frame_errors"] == 0 and set(states) <= {"lost", "reconnecting"}
    assert len(attempts) >= 4 and report["generator"]["calls"] == 0
    delays = [d.rsplit("next try in ", 1)[1] for _, kind, d in report["audio"]["events"] if kind == "reopen_failed"]
    assert delays[:4] == ["0.1 s", "0.2 s", "0.4 s", "0.4 s"]  # back-off doubles, capped at backoff_max_s
    assert np.all(np.diff(attempts) >= 0.09)  # and the attempts wait for it (no busy retrying)
    assert all(np.isfinite(means))


def test_taken_osc_port_fails_loudly_with_the_gallery_preset(tmp_path: Path) -> None:
    """``osc.required: true`` (the gallery): the OSC port is taken -> exit 2 with one line naming the port and the
    key; ``required: false`` (headless) runs without OSC as before."""
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        path = preset(tmp_path, f"osc: {{port: {port}, oscquery: false, feedback: false}}\n", extends="gallery")
        env = live_env(tmp_path)
        done = subprocess.run(
            [sys.executable, "run.py", "live", "--preset", str(path), "--input", "presets/demo/demo_speech.flac",
             "--duration", "2"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: osc: cannot listen on 127.0.0.1:{port} (")
        assert "osc.required is true" in last
        path = preset(tmp_path, f"osc: {{port: {port}, oscquery: false, feedback: false}}\n", extends="headless")
        report = tmp_path / "r.json"
        done = subprocess.run(
            [sys.executable, "run.py", "live", "--preset", str(path), "--duration", "2", "--report", str(report)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        osc = json.loads(report.read_text())["osc"]
        assert osc["enabled"] is False and "cannot listen" in osc["error"]
    finally:
        blocker.close()


def test_live_config_carries_the_service_section() -> None:
    from installation.live import config_from_preset
    from installation.presets import load_preset

    cfg = config_from_preset(load_preset("gallery"))
    assert cfg.service.single_instance and cfg.service.log_file.endswith("live.log") and cfg.osc.required
    assert replace(cfg, service=None).service is None
