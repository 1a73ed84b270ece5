"""The live scenes: grid (n x n faces) and morph (walk + trails). Pure drawing from FrameState."""

from __future__ import annotations

import numpy as np
import pytest

from scenes import SCENES, FrameState, Grid, GridParams, Morph, MorphParams, Scene, make_scene

BG = np.array((8, 8, 12))


def solid(rgb: tuple[int, int, int], size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), rgb, np.uint8)


def canvas(h: int = 144, w: int = 256) -> np.ndarray:
    return np.full((h, w, 3), 77, np.uint8)  # junk every draw must overwrite


def test_registry_protocol_and_faces_needed() -> None:
    assert {"portrait", "grid", "morph"} <= set(SCENES)
    for name in ("grid", "morph"):
        scene = make_scene(name)
        assert isinstance(scene, Scene) and scene.name == name
    assert Grid().faces_needed({}) == 4
    assert Grid().faces_needed({"n": 3}) == 9
    assert Morph().faces_needed({"trail": 0.9}) == 1


@pytest.mark.parametrize("cls", [Grid, Morph])
def test_background_before_any_image_and_glow_follows_level(cls: type) -> None:
    scene, out = cls(), canvas()
    scene.draw(out, FrameState(time=0.0, gate=1.0, level=0.0))
    assert (out == BG.astype(np.uint8)).all()
    scene.draw(out, FrameState(time=0.02, gate=1.0, level=1.0))  # a clap before the first face
    glow = BG + np.array((40, 30, 64))
    assert np.abs(out.reshape(-1, 3).astype(int) - glow).max() <= 1


def test_grid_cells_show_their_images_in_a_centred_square() -> None:
    p = GridParams(n=2, fade_in_s=0.0, crossfade_s=0.0, gutter=0, pulse=0.0, interpolation="nearest")
    scene, out = Grid(p), canvas(128, 256)
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    faces = tuple(solid(c) for c in colours)
    scene.draw(out, FrameState(time=0.0, gate=1.0, images=faces, image_index=0))
    scene.draw(out, FrameState(time=0.1, gate=1.0, images=faces, image_index=0))
    # the 128 x 128 square in the middle holds the 2 x 2 mosaic; the bars at the sides are background
    assert tuple(out[32, 64 + 32]) == colours[0] and tuple(out[32, 64 + 96]) == colours[1]
    assert tuple(out[96, 64 + 32]) == colours[2] and tuple(out[96, 64 + 96]) == colours[3]
    assert (out[:, :60] == BG.astype(np.uint8)).all() and (out[:, -60:] == BG.astype(np.uint8)).all()


def test_grid_cycles_images_and_relays_when_n_changes() -> None:
    p = GridParams(n=2, fade_in_s=0.0, crossfade_s=0.0, gutter=0, pulse=0.0, interpolation="nearest")
    scene, out = Grid(p), canvas(96, 96)
    face = (solid((50, 100, 150)),)
    scene.draw(out, FrameState(time=0.0, gate=1.0, images=face, image_index=0))
    scene.draw(out, FrameState(time=0.1, gate=1.0, images=face, image_index=0))
    assert (out == np.array((50, 100, 150), np.uint8)).all()  # one image fills all four cells
    two = (solid((10, 10, 10)), solid((250, 250, 250)))
    scene.draw(out, FrameState(time=0.2, gate=1.0, images=two, image_index=1, params={"n": 3}))
    top = out[: 96 // 3]
    assert tuple(top[5, 5]) == (10, 10, 10) and tuple(top[5, 40]) == (250, 250, 250)


def test_grid_crossfade_fades_and_pulse() -> None:
    p = GridParams(n=1, fade_in_s=0.0, crossfade_s=0.2, gutter=0, pulse=0.5, idle_fade_s=1.0)
    scene, out = Grid(p), canvas(64, 64)
    a, b = (solid((0, 0, 0)),), (solid((200, 200, 200)),)
    scene.draw(out, FrameState(time=1.0, gate=1.0, level=1.0, images=a, image_index=0))
    scene.draw(out, FrameState(time=1.1, gate=1.0, level=1.0, images=b, image_index=1))
    glow = BG + np.array((40, 30, 64))
    expected = glow + (np.array((100, 100, 100)) - glow)  # halfway through the crossfade, full brightness
    assert np.abs(out[32, 32].astype(int) - expected).max() <= 2
    scene.draw(out, FrameState(time=1.3, gate=1.0, level=0.0, images=b, image_index=1))
    expected = BG + (200 - BG) * 0.5  # crossfade done; silence halves the brightness (pulse 0.5)
    assert np.abs(out[32, 32].astype(int) - expected).max() <= 2
    scene.draw(out, FrameState(time=31.3, gate=0.0, level=0.0, images=b, image_index=1))
    assert (out == BG.astype(np.uint8)).all()  # idle: faded to the background


def test_grid_params_validation() -> None:
    for bad in ({"n": 5}, {"n": 0}, {"n": 2.5}, {"pulse": 2.0}, {"glow": (1, 2)}, {"interpolation": "x"}):
        with pytest.raises(ValueError, match="grid parameter"):
            GridParams.from_params(bad)
    assert GridParams.from_params({"n": 3.0, "unknown": 1}).n == 3


def test_morph_trail_blends_previous_frames() -> None:
    def run(trail: float) -> np.ndarray:
        p = MorphParams(trail=trail, trail_s=1.0, crossfade_s=0.0, fade_in_s=0.0, sway=0.0, zoom_pulse=0.0)
        scene, out = Morph(p), canvas(64, 64)
        scene.draw(out, FrameState(time=0.0, gate=1.0, images=(solid((0, 0, 0)),), image_index=0))
        scene.draw(out, FrameState(time=0.01, gate=1.0, images=(solid((0, 0, 0)),), image_index=0))
        scene.draw(out, FrameState(time=0.5, gate=1.0, images=(solid((200, 200, 200)),), image_index=1))
        return out

    assert (run(0.0) == 200).all()  # no trail: the new face at once
    # trail 0.5 -> time constant 0.5 s: after 0.49 s the picture is 1 - exp(-0.98) of the way
    expected = 200 * (1 - np.exp(-0.49 / 0.5))
    assert abs(float(run(0.5).mean()) - expected) <= 2.0


def test_morph_zoom_pulse_and_sway_move_the_face() -> None:
    face = np.zeros((64, 64, 3), np.uint8)
    face[:, :32] = 255  # left half white
    p = MorphParams(trail=0.0, fade_in_s=0.0, crossfade_s=0.0, sway=0.0, zoom_pulse=0.5)
    scene, out = Morph(p), canvas(64, 64)
    scene.draw(out, FrameState(time=0.0, gate=1.0, level=0.0, images=(face,), image_index=0))
    scene.draw(out, FrameState(time=0.01, gate=1.0, level=0.0, images=(face,), image_index=0))
    quiet = out.copy()
    scene.draw(out, FrameState(time=0.02, gate=1.0, level=1.0, images=(face,), image_index=0))
    assert not np.array_equal(out, quiet)  # a clap zooms at once
    assert float(out.mean()) > float(quiet.mean()) - 40  # the glow rises, the face stays


def test_same_states_same_pixels_reset_and_non_contiguous_canvas() -> None:
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    states = [
        FrameState(time=k / 30, gate=float(k < 8), level=(k % 5) / 4, images=tuple(faces), image_index=k // 3)
        for k in range(14)
    ]
    for cls in (Grid, Morph):
        scene = cls()

        def run(scene: Scene) -> list[np.ndarray]:
            out, frames = canvas(), []
            for s in states:
                scene.draw(out, s)
                frames.append(out.copy())
            return frames

        first = run(scene)
        scene.reset()
        again = run(scene)
        assert all(np.array_equal(x, y) for x, y in zip(first, again))
        big = np.zeros((144, 512, 3), np.uint8)
        view = big[:, ::2]
        scene.reset()
        for s in states:
            scene.draw(view, s)
        assert np.array_equal(view, first[-1]) and (big[:, 1::2] == 0).all()


@pytest.mark.parametrize("cls", [Grid, Morph])
def test_bad_canvas_and_image_raise(cls: type) -> None:
    scene = cls()
    with pytest.raises(ValueError, match="canvas"):
        scene.draw(np.zeros((8, 8, 3), np.float32), FrameState(time=0.0))
    with pytest.raises(ValueError, match="uint8"):
        scene.draw(canvas(), FrameState(time=0.0, images=(np.zeros((8, 8, 3), np.float32),), image_index=0))
