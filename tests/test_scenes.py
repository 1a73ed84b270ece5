"""Scenes: pure drawing from FrameState (no clocks, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from scenes import SCENES, FrameState, Portrait, PortraitParams, Scene, make_scene

BG = (8, 8, 12)


def solid(rgb: tuple[int, int, int], size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), rgb, np.uint8)


def canvas(h: int = 128, w: int = 128) -> np.ndarray:
    return np.full((h, w, 3), 77, np.uint8)  # junk that every draw must overwrite


def test_registry_and_protocol() -> None:
    assert set(SCENES) >= {"portrait"}
    scene = make_scene("portrait")
    assert isinstance(scene, Scene) and isinstance(scene, Portrait)
    with pytest.raises(ValueError, match="unknown scene 'nope'"):
        make_scene("nope")


def test_background_before_first_image_even_with_voice() -> None:
    scene, out = Portrait(), canvas()
    for k in range(5):
        scene.draw(out, FrameState(time=k / 30, gate=1.0, level=0.8))
        assert (out == np.array(BG, np.uint8)).all()


def test_face_fills_canvas_and_fades_in() -> None:
    scene, out = Portrait(PortraitParams(fade_in_s=0.1)), canvas(96, 160)  # non-square: cover
    face = solid((200, 100, 50))
    scene.draw(out, FrameState(time=0.0, gate=1.0, images=(face,), image_index=0))
    assert (out == np.array(BG, np.uint8)).all()  # no time elapsed: still the background
    scene.draw(out, FrameState(time=0.1, gate=1.0, images=(face,), image_index=0))
    expected = np.array(BG) + (np.array([200, 100, 50]) - np.array(BG)) * (1 - np.exp(-1))
    assert np.abs(out.reshape(-1, 3).mean(0) - expected).max() < 1.5
    scene.draw(out, FrameState(time=2.0, gate=1.0, images=(face,), image_index=0))
    assert np.abs(out.astype(int) - face[0, 0].astype(int)).max() <= 1


def test_crossfade_between_generated_images_is_linear_in_time() -> None:
    scene, out = Portrait(PortraitParams(fade_in_s=0.0, crossfade_s=0.2)), canvas()
    a, b = solid((0, 0, 0)), solid((200, 200, 200))
    scene.draw(out, FrameState(time=1.0, gate=1.0, images=(a,), image_index=0))
    assert out.max() <= 1
    scene.draw(out, FrameState(time=1.1, gate=1.0, images=(b,), image_index=1))  # new image: fade from t=1.0
    assert abs(float(out.mean()) - 100.0) <= 1.0
    scene.draw(out, FrameState(time=1.15, gate=1.0, images=(b,), image_index=1))  # same index: keeps fading
    assert abs(float(out.mean()) - 150.0) <= 1.0
    scene.draw(out, FrameState(time=1.3, gate=1.0, images=(b,), image_index=1))
    assert abs(float(out.mean()) - 200.0) <= 1.0


def test_idle_fades_exponentially_to_background() -> None:
    p = PortraitParams(fade_in_s=0.0, idle_fade_s=1.0, idle_zoom=1.0)
    scene, out = Portrait(p), canvas()
    face = solid((208, 208, 212))
    scene.draw(out, FrameState(time=0.0, gate=1.0, images=(face,), image_index=0))
    scene.draw(out, FrameState(time=1.0, gate=0.0, images=(face,), image_index=0))
    expected = np.array(BG) + (np.array([208, 208, 212]) - np.array(BG)) * np.exp(-1)
    assert np.abs(out.reshape(-1, 3).mean(0) - expected).max() < 1.5
    scene.draw(out, FrameState(time=30.0, gate=0.0, images=(face,), image_index=0))
    assert (out == np.array(BG, np.uint8)).all()


def test_idle_zooms_in_slowly() -> None:
    p = PortraitParams(fade_in_s=0.0, idle_fade_s=1e9, idle_zoom=1.25, idle_zoom_s=0.5, interpolation="nearest")
    scene, out = Portrait(p), canvas()
    face = solid((0, 0, 255))
    face[:, :4] = (255, 0, 0)  # a red strip: 8 px wide at 128 px, zoomed out of view at 1.25x
    scene.draw(out, FrameState(time=0.0, gate=1.0, images=(face,), image_index=0))
    assert tuple(out[64, 0]) == (255, 0, 0)
    scene.draw(out, FrameState(time=5.0, gate=0.0, images=(face,), image_index=0))
    assert out[64, 0, 2] > 250 and out[64, 0, 0] < 5
    # Voice back: the zoom returns towards 1.
    scene.draw(out, FrameState(time=15.0, gate=1.0, images=(face,), image_index=0))
    assert tuple(out[64, 0]) == (255, 0, 0)


def test_same_states_same_pixels_and_reset() -> None:
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    states = [
        FrameState(
            time=k / 30, gate=float(k < 8), level=0.5, images=(faces[min(k // 3, 3)],), image_index=min(k // 3, 3)
        )
        for k in range(14)
    ]

    def run(scene: Portrait) -> list[np.ndarray]:
        out, frames = canvas(), []
        for s in states:
            scene.draw(out, s)
            frames.append(out.copy())
        return frames

    scene = Portrait()
    first = run(scene)
    scene.reset()
    again = run(scene)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(first[5], first[13])


def test_params_per_frame_override_and_validation() -> None:
    scene, out = Portrait(), canvas()
    face = solid((100, 100, 100))
    params = {"fade_in_s": 0.0, "background": [0, 0, 0], "something_else": 1}  # unknown keys are ignored
    scene.draw(out, FrameState(time=0.0, gate=1.0, images=(face,), image_index=0, params=params))
    assert (out == 100).all()
    with pytest.raises(ValueError, match="idle_zoom"):
        scene.draw(out, FrameState(time=0.1, params={"idle_zoom": 0.5}))
    with pytest.raises(ValueError, match="interpolation"):
        PortraitParams(interpolation="bogus")


def test_bad_canvas_and_image_raise() -> None:
    scene = Portrait()
    with pytest.raises(ValueError, match="canvas"):
        scene.draw(np.zeros((8, 8, 3), np.float32), FrameState(time=0.0))
    with pytest.raises(ValueError, match="canvas"):
        scene.draw(np.zeros((8, 8), np.uint8), FrameState(time=0.0))
    with pytest.raises(ValueError, match="uint8"):
        scene.draw(canvas(), FrameState(time=0.0, images=(np.zeros((8, 8, 3), np.float32),), image_index=0))


def test_draws_into_a_non_contiguous_canvas() -> None:
    big = np.zeros((128, 256, 3), np.uint8)
    view = big[:, ::2]  # e.g. a strided view onto a window surface
    scene = Portrait(PortraitParams(fade_in_s=0.0))
    scene.draw(view, FrameState(time=0.0, gate=1.0, images=(solid((50, 60, 70)),), image_index=0))
    assert (view == np.array([50, 60, 70], np.uint8)).all()
    assert (big[:, 1::2] == 0).all()


def test_params_dict_updated_in_place_takes_effect() -> None:
    scene, out = Portrait(), canvas()
    params = {"fade_in_s": 0.0, "background": (0, 0, 0)}
    scene.draw(out, FrameState(time=0.0, params=params))
    assert (out == 0).all()
    params["background"] = (20, 30, 40)  # e.g. an OSC handler updating the live parameters
    scene.draw(out, FrameState(time=0.1, params=params))
    assert (out == np.array([20, 30, 40], np.uint8)).all()


def _framed_face(size: int = 64) -> np.ndarray:
    """A face stand-in whose border rows and columns are marked: a white square with a red frame."""
    face = np.full((size, size, 3), 230, np.uint8)
    face[:2], face[-2:], face[:, :2], face[:, -2:] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    return face


def _not_background(out: np.ndarray, bg: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels that differ from ``bg`` by more than 8 levels."""
    ys, xs = np.nonzero(np.abs(out.astype(int) - np.array(bg)).max(axis=2) > 8)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("zoom_state", ["active", "idle"])
def test_portrait_fit_shows_the_whole_face_letterboxed_and_fill_crops_it(zoom_state: str) -> None:
    bg = (20, 90, 40)
    face = _framed_face()
    for fit in ("fit", "fill"):
        scene, out = Portrait(PortraitParams(fade_in_s=0.0, idle_fade_s=1e6, background=bg, fit=fit)), canvas(90, 160)
        scene.draw(out, FrameState(time=0.0, gate=1.0, images=(face,), image_index=0))
        if zoom_state == "idle":  # the idle zoom (1.12) grows the face past the frame: cropped, even in fit mode
            scene.draw(out, FrameState(time=100.0, gate=0.0, images=(face,), image_index=0))
        red = (out[..., 0] > 200) & (out[..., 1] < 80)
        if fit == "fill":  # 16:9 covered: the face's top and bottom rows are cut off
            assert not red[0, 10:150].any() and not red[89, 10:150].any()
            assert not (np.abs(out.astype(int) - np.array(bg)).max(axis=2) <= 8).any()
            continue
        x0, y0, x1, y1 = _not_background(out, bg)
        if zoom_state == "active":  # the whole face, centred, 90 x 90 on a 160 x 90 canvas; bars left and right
            assert (x0, y0, x1, y1) == (35, 0, 125, 90)
            assert red[:, 36].all() and red[:, 123].all() and red[1, 40:120].all() and red[88, 40:120].all()
            assert (out[:, :35] == np.array(bg, np.uint8)).all() and (out[:, 125:] == np.array(bg, np.uint8)).all()
        else:
            assert x0 > 25 and x1 < 135 and not red[0, 40:120].any()  # bars remain; top and bottom crop a little


def test_morph_fit_keeps_the_whole_face_inside_the_frame_through_sway_and_zoom() -> None:
    from scenes import Morph, MorphParams

    bg = (30, 30, 120)
    face = _framed_face()
    scene = Morph(MorphParams(fit="fit", background=bg, glow=(0, 0, 0), trail=0.0, fade_in_s=0.0, sway=0.05,
                              zoom_pulse=0.2))  # fmt: skip
    out = canvas(270, 480)
    boxes = []
    for k in range(200):  # 20 s of sway (periods ~7.7 and ~9.1 s), the envelope from 0 to 1
        t = k * 0.1
        scene.draw(out, FrameState(time=t, gate=1.0, level=(k % 10) / 9, images=(face,), image_index=0))
        red = (out[..., 0] > 150) & (out[..., 2] < 110)
        ys, xs = np.nonzero(red)
        boxes.append((xs.min(), ys.min(), xs.max(), ys.max()))
        assert ys.min() > 0 and ys.max() < 269 and xs.min() > 0 and xs.max() < 479  # never touches an edge
    boxes = np.array(boxes)
    assert np.ptp(boxes[:, 0]) > 5 and np.ptp(boxes[:, 1]) > 5  # it does sway
    fill = Morph(MorphParams(fit="fill", trail=0.0, fade_in_s=0.0))
    fill.draw(out, FrameState(time=0.0, gate=1.0, images=(face,), image_index=0))
    fill.draw(out, FrameState(time=0.1, gate=1.0, images=(face,), image_index=0))
    assert not ((out[..., 0] > 150) & (out[..., 2] < 110))[:, 100:380].any()  # covered: no face edge in view


def test_fit_must_be_a_known_mode() -> None:
    from scenes import MorphParams

    with pytest.raises(ValueError, match="portrait parameter fit must be one of fill, fit, got 'stretch'"):
        PortraitParams(fit="stretch")
    with pytest.raises(ValueError, match="morph parameter fit must be one of fill, fit"):
        MorphParams(fit="contain")
    with pytest.raises(ValueError, match="max_work_px"):
        MorphParams(max_work_px=8)
