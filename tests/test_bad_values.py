"""Bad values that used to get through (issue 24, item 10), each as a user meets it: ``run.py`` with a preset file,
a command-line flag or an OSC message; SIGTERM and Ctrl-C on ``render`` and ``live``; rendering over the input."""

from __future__ import annotations

import hashlib
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

import run

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "presets" / "demo" / "demo_speech.flac"
ENV = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}


def default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so Python installs its Ctrl-C handler even when
    the test runs in a background job (which starts with SIGINT ignored, as a shell's ``cmd &`` does)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run ``run.py argv``; it must exit 2 with one ``error:`` line (or argparse's usage + error line)."""
    try:
        code = run.main(argv)
    except SystemExit as exc:  # argparse: usage, then "run.py render: error: argument --x: ..."
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize(
    ("yaml", "key"),
    [
        ("generation: {image_ema_s: .nan}", "generation.image_ema_s"),  # rendered an all-black video, exit 0
        ("generation: {gen_fps: .nan}", "generation.gen_fps"),  # ended in a traceback
        ("generation: {gen_fps: .inf}", "generation.gen_fps"),
        ("osc: {feedback_hz: .nan}", "osc.feedback_hz"),  # accepted silently
        ("input: {reconnect_min_s: .nan}", "input.reconnect_min_s"),  # accepted silently
        ("generation: {vad: {hangover_s: .nan}}", "generation.vad.hangover_s"),
        ("params: {brightness: .nan}", "params.brightness"),
        ("params: {vad/threshold_db: -.inf}", "params.vad/threshold_db"),
        ("scenes: {portrait: {idle_fade_s: .nan}}", "scenes.portrait.idle_fade_s"),
        ("sound: {buffer_size: .nan}", "sound.buffer_size"),
        ("attract: {after_s: .nan}", "attract.after_s"),
    ],
)
def test_non_finite_preset_values_stop_render_and_live(
    yaml: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    preset = tmp_path / "bad.yaml"
    preset.write_text(f"extends: headless\n{yaml}\n")
    for argv in (
        ["render", str(DEMO), "-o", str(tmp_path / "out.mp4"), "--preset", str(preset), "--no-progress"],
        ["live", "--preset", str(preset), "--duration", "1"],
    ):
        line = one_line_error(capsys, argv)
        assert line.startswith("error: ") and "bad.yaml" in line and f"'{key}'" in line, line
    assert not list(tmp_path.glob("*.mp4*"))


@pytest.mark.parametrize(
    "argv",
    [
        ["render", str(DEMO), "-o", "OUT", "--gen-fps", "nan"],  # ended in a traceback
        ["render", str(DEMO), "-o", "OUT", "--gen-fps", "inf"],
        ["render", str(DEMO), "-o", "OUT", "--sound-mix", "nan"],
        ["render", str(DEMO), "-o", "OUT", "--fps", "nan"],
        ["live", "--duration", "nan"],
        ["live", "--duration=-inf"],
        ["capture", "--duration", "inf"],
        ["bench", "--only", "live", "--live-seconds", "nan"],
        ["export", "RUN", "--truncation", "nan"],
    ],
)
def test_non_finite_flags_are_refused_naming_the_flag(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [str(tmp_path / "out.mp4") if a == "OUT" else a for a in argv]
    bad = next(i for i, a in enumerate(argv) if a.endswith(("nan", "inf")))
    flag = argv[bad].split("=")[0] if "=" in argv[bad] else argv[bad - 1]
    line = one_line_error(capsys, argv)
    assert flag in line and ("finite" in line or "number" in line), line


def test_non_finite_values_in_code_paths_and_scripts() -> None:
    from installation.presets import RenderParams
    from installation.visitor_script import ScriptError, parse_script

    for name in ("gen_fps", "noise_drift_s", "image_ema_s"):
        with pytest.raises(ValueError, match=name):
            RenderParams(**{name: math.nan})
    with pytest.raises(ValueError, match="gen_fps"):
        RenderParams(gen_fps=-1.0)
    for text in ("wait inf", "wait nan"):
        with pytest.raises(ScriptError, match="SECONDS >= 0"):
            parse_script(text + "\ncapture/go\n", "s.txt")


def test_non_finite_osc_values_are_rejected_on_the_wire() -> None:
    """A NaN and an infinity from a real python-osc client on loopback: counted as ``not_finite``, not applied."""
    from pythonosc.udp_client import SimpleUDPClient

    from installation.osc import OscControl
    from installation.params import Parameters
    from installation.presets import OscConfig

    params = Parameters()
    control = OscControl(params, OscConfig(port=0, oscquery=False, feedback=False))
    control.start()
    try:
        host, port = control.server.address
        client = SimpleUDPClient(host, port)
        for value in (math.nan, math.inf, 0.25):
            client.send_message("/avgan/brightness", value)
        deadline = time.monotonic() + 5.0
        while params.stats()["enqueued"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        params.apply_pending()
        assert params.target("brightness") == 0.25
        assert control.stats()["osc"]["rejected"].get("not_finite") == 2
    finally:
        control.stop()


# -- signals and files ----------------------------------------------------------------------------------------


def long_clip(tmp_path: Path, seconds: float = 60.0) -> Path:
    from engine.audio import load_audio

    voice = load_audio(DEMO, 16000)
    path = tmp_path / "long.wav"
    sf.write(str(path), np.tile(voice, int(seconds * 16000 / len(voice)) + 1)[: int(seconds * 16000)], 16000)
    return path


@pytest.mark.parametrize(
    ("sig", "code", "said"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_render_killed_mid_way_leaves_no_partial_file(
    sig: int, code: int, said: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    """SIGTERM left ``.OUT.mp4.<random>.part`` behind (Ctrl-C cleaned up): both clean up now."""
    clip = long_clip(tmp_path)
    out = tmp_path / "out" / "video.mp4"
    out.parent.mkdir()
    argv = [sys.executable, "run.py", "render", str(clip), "-o", str(out), "--bundle", str(tiny_bundle), "--size",
            "256", "--gen-fps", "0", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline and proc.poll() is None:
        parts = list(out.parent.glob(".video.mp4.*.part"))
        if parts and parts[0].stat().st_size > 50_000:  # frames are being encoded
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the render finished before it could be interrupted: make the clip longer"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert said in err and "Traceback" not in err
    assert list(out.parent.iterdir()) == []  # neither the partial file nor an output


@pytest.mark.parametrize(
    ("sig", "code", "reason"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 0, "SIGTERM")]
)
def test_live_report_is_final_after_ctrl_c_and_sigterm(
    sig: int, code: int, reason: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    """The report still said ``frames 1`` after Ctrl-C: it is rewritten when the loop ends, however it ends.

    SIGTERM is how ``systemctl stop`` ends ``live``: the service stops the loop after its frame and the process
    exits 0 (a requested stop is not a failure for systemd); Ctrl-C exits 130."""
    preset = tmp_path / "p.yaml"
    preset.write_text(
        f"extends: {ROOT / 'presets' / 'headless.yaml'}\nosc: {{enabled: false}}\nengine: {{bundle: {tiny_bundle}}}\n"
        "display: {size: [320, 180]}\n"
    )
    report = tmp_path / "live.json"
    argv = [sys.executable, "run.py", "live", "--preset", str(preset), "--report", str(report)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 60.0
    while not report.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert report.exists(), proc.communicate(timeout=10)[1][-2000:]
    assert json.loads(report.read_text())["frames"] <= 2  # written at the first frame
    time.sleep(2.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    data = json.loads(report.read_text())
    assert data["frames"] > 20 and data["wall_s"] > 1.5
    assert data["quit_reason"].startswith(reason)
    assert data["vad"]["analysed_s"] > 1.0


def test_render_refuses_to_overwrite_its_input(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.test_render import make_mp4

    video = make_mp4(tmp_path / "clip.mp4", np.zeros(16000, np.float32))
    before = hashlib.sha256(video.read_bytes()).hexdigest()
    link = tmp_path / "same.mp4"
    os.link(video, link)  # another name for the same file
    for target in (video, tmp_path / "." / "clip.mp4", link):
        line = one_line_error(
            capsys, ["render", str(video), "-o", str(target), "--bundle", str(tiny_bundle), "--no-progress"]
        )
        assert "is the input file" in line
    assert hashlib.sha256(video.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "same.mp4"]
