"""The generated voice on stage (installation/voice_stage.py) and the sound engine's answer path, with pyo's offline
server as the speakers' stand-in."""

from __future__ import annotations

import numpy as np
import pytest

from installation.voice_stage import MODES, VoiceStage, run_generator


def test_answer_mode_answers_once_per_utterance_with_the_newest_voice() -> None:
    stage = VoiceStage(16000)
    first, second = np.full(100, 0.1, np.float32), np.full(100, 0.2, np.float32)
    assert stage.step(0.0, False, "answer") is None  # nothing generated yet
    stage.offer(first)
    assert stage.step(0.1, True, "answer") is None  # still speaking
    stage.offer(second)
    action = stage.step(0.2, False, "answer")  # the gate closes: answer with the newest voice
    assert action is not None and action.action == "answer" and action.samples is second and action.rate == 16000
    assert stage.step(0.3, False, "answer") is None and stage.answers == 1 and stage.last_answer_t == 0.2


def test_loop_mode_follows_each_new_voice_and_leaving_it_returns_to_the_cloud() -> None:
    stage = VoiceStage(8000)
    stage.offer(np.ones(10, np.float32))
    a = stage.step(0.0, True, "loop")
    assert a is not None and a.action == "loop" and a.samples.size == 10
    assert stage.step(0.1, True, "loop") is None  # the same voice: nothing new
    stage.offer(np.zeros(5, np.float32))
    assert stage.step(0.2, False, "loop").samples.size == 5
    back = stage.step(0.3, False, "echo")
    assert back is not None and back.action == "loop" and back.samples.size == 0  # empty clip: the cloud again
    assert stage.step(0.4, True, "echo") is None and stage.step(0.5, False, "echo") is None  # echo: no answers
    with pytest.raises(ValueError, match="sound/answer"):
        stage.step(0.6, False, "shout")
    assert MODES == ("answer", "loop", "echo")


def test_run_generator_reads_the_bundle_outputs() -> None:
    class Bundle:
        def __init__(self, inputs, outputs) -> None:
            self.inputs, self.outputs = inputs, outputs

    class SoundGen:
        bundle = Bundle({"noise": None}, {"image": None, "sound": None})

        def generate(self, batch=None, **feeds):
            assert set(feeds) == {"noise"}  # no audio input: none passed
            return {"image": np.zeros((batch, 4, 4, 3), np.uint8), "sound": np.ones((batch, 8), np.float32)}

    class ImageGen:
        bundle = Bundle({"audio": None, "noise": None}, {"image": None})

        def __call__(self, audio, noise):
            return np.zeros((audio.shape[0], 4, 4, 3), np.uint8)

    images, sound = run_generator(SoundGen(), np.zeros(16, np.float32), np.zeros((2, 3), np.float32))
    assert images.shape == (2, 4, 4, 3) and sound.shape == (2, 8)
    images, sound = run_generator(ImageGen(), np.zeros(16, np.float32), np.zeros((3, 3), np.float32))
    assert images.shape == (3, 4, 4, 3) and sound is None


def test_answer_plays_the_clip_once_from_the_requested_time() -> None:
    pytest.importorskip("pyo")
    from installation.sound import render_offline

    rate, out_rate = 16000, 48000
    t = np.arange(8000) / rate
    clip = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = render_offline(np.zeros(rate, np.float32), rate, 1.2, {"sound/mix": 0.0, "sound/level": 1.0},
                         sample_rate=out_rate, channels=1, control_rate_hz=100.0, buffer_size=256,
                         voice_actions=[(0.3, "answer", clip, rate)])  # fmt: skip
    x = out[:, 0]
    loud = np.flatnonzero(np.abs(x) > 1e-3)
    assert loud.size, "the answer is in the output"
    onset = loud[0] / out_rate
    assert 0.3 <= onset <= 0.3 + 2 * 256 / out_rate + 0.011  # within the next buffers (and the on-fade's start)
    end = loud[-1] / out_rate
    assert end == pytest.approx(onset + 0.5, abs=0.02)  # 0.5 s clip, played once
    seg = x[loud[0] + 2400 : loud[0] + 2400 + 4800]  # 50 ms in: past the on-fade
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.size)))
    assert abs(np.argmax(spectrum) * out_rate / seg.size - 440) < 15
