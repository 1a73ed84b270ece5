"""The wav2pix landmark CNN (training/families/wav2pix/landmarks.py): landmark normalisation and mirroring, its fit,
its dlib teacher, and the trainer building, saving and reusing a run's CNN for the pose-code regression. Real-face
checks skip without ``../shared/data``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.errors import UserError
from tests.test_face_metrics import analyzer, real, real_analysis  # noqa: F401  (fixtures)
from tests.training_support import make_wav2pix_dataset, tiny_config_dict
from training import face_metrics as fm
from training.config import config_from_dict
from training.families.wav2pix.landmarks import (
    LANDMARK_FILE,
    MIRROR_68,
    LandmarkRegressor,
    LandmarkTeacher,
    PoseCodes,
    fit_landmark_regressor,
    mirror_landmarks,
    normalise_landmarks,
    save_landmarks,
)
from training.families.wav2pix.prior import POSE_CODES_FILE
from training.loop import train


def _face_points(yaw: float = 0.0) -> np.ndarray:
    """Synthetic [68, 2] landmarks: eyes at x 20 / 44 (y 30), nose tip at 32 + 24 * yaw, mouth below."""
    p = np.zeros((68, 2))
    p[:, 0] = np.linspace(10, 54, 68)
    p[:, 1] = 40.0
    p[36:42] = (20.0, 30.0)
    p[42:48] = (44.0, 30.0)
    p[30] = (32.0 + 24.0 * yaw, 38.0)
    p[62], p[66] = (32.0, 47.0), (32.0, 50.0)
    return p


def test_mirror_map_is_a_left_right_involution():
    m = np.asarray(MIRROR_68)
    assert sorted(m) == list(range(68)) and (m[m] == np.arange(68)).all()
    assert m[36] == 45 and m[48] == 54 and m[30] == 30 and m[0] == 16
    p = np.stack([_face_points(0.1), _face_points(-0.05)])
    flipped = mirror_landmarks(p, 64)
    np.testing.assert_allclose(mirror_landmarks(flipped, 64), p)
    np.testing.assert_allclose(fm.pose_statistics(flipped)["yaw"], -fm.pose_statistics(p)["yaw"], atol=1e-12)


def test_normalised_landmarks_drop_the_framing_and_keep_the_pose():
    p = np.stack([_face_points(0.1)])
    moved = p * 1.7 + np.array([5.0, -3.0])
    n, n_moved = normalise_landmarks(p), normalise_landmarks(moved)
    np.testing.assert_allclose(n, n_moved, atol=1e-5)
    pts = n.reshape(68, 2)
    np.testing.assert_allclose((pts[36:42].mean(0) + pts[42:48].mean(0)) / 2, 0.0, atol=1e-6)
    assert np.linalg.norm(pts[42:48].mean(0) - pts[36:42].mean(0)) == pytest.approx(1.0)
    assert pts[30, 0] == pytest.approx(0.1)  # yaw survives
    with pytest.raises(ValueError, match=r"\[N, 68, 2\]"):
        normalise_landmarks(np.zeros((2, 5, 2)))


def test_mirrored_landmarks_match_dlib_on_the_mirrored_faces(analyzer, real, real_analysis):  # noqa: F811
    images = real[0]
    flipped = analyzer.analyze(np.ascontiguousarray(images[:, :, ::-1]), embed=False)
    ok = real_analysis.detected & flipped.detected
    assert ok.sum() >= 10
    err = np.linalg.norm(mirror_landmarks(real_analysis.landmarks[ok], images.shape[2]) - flipped.landmarks[ok], axis=2)
    assert np.median(err) < 1.5  # pixels at 64 px: the relabelling is right (a wrong map is off by ~10 px)


def test_fit_rejects_faces_without_landmarks():
    faces = np.zeros((20, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="only 0 faces"):
        fit_landmark_regressor(faces, np.full((20, 68, 2), np.nan))
    with pytest.raises(ValueError, match=r"\[N,68,2\]"):
        fit_landmark_regressor(faces, np.zeros((19, 68, 2)))


@pytest.mark.slow
def test_regressor_predicts_the_yaw_of_unseen_real_faces(analyzer):  # noqa: F811
    """About 3 minutes: fit on 60 real faces, check yaw on 20 others (the full prior reaches 0.98 on 111)."""
    from tests.test_face_metrics import W2P, real_faces

    if not W2P.is_dir():
        pytest.skip(f"real Wav2Pix data not found at {W2P}")
    images = real_faces(per_identity=40)[0]
    found = analyzer.analyze(images, embed=False)
    fit, held = np.arange(len(images)) % 4 != 0, np.arange(len(images)) % 4 == 0
    model, _ = fit_landmark_regressor(images[fit], found.landmarks[fit], steps=1500, batch_size=32)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images[held])).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        pred = model(x).numpy().reshape(-1, 68, 2)
    ok = found.detected[held]
    yaw_pred = fm.pose_statistics(pred)["yaw"][ok]
    yaw_dlib = fm.pose_statistics(found.landmarks[held])["yaw"][ok]
    assert np.corrcoef(yaw_pred, yaw_dlib)[0, 1] > 0.6


def _pose_run(tmp_path, steps: int, teacher_every: int = 0):
    """A tiny dataset, a pose-code config with the regression on, and a run folder seeded with pose codes (dlib finds
    no face in the drawn discs, so the codes are given)."""
    from safetensors.torch import save_file

    data = make_wav2pix_dataset(tmp_path / "ds", identities=2, faces=4, snippets=2)
    d = tiny_config_dict(steps=steps)
    d["model"]["pose_code_dim"] = 2
    d["loss"] = {"pose_code_weight": 1.0, "landmark_fit_steps": 5, "landmark_teacher_every": teacher_every,
                 "landmark_teacher_faces": 3}  # fmt: skip
    cfg = config_from_dict(d)

    def folder(name: str):
        out = tmp_path / name
        out.mkdir()
        fit = PoseCodes(torch.zeros(2, 136), torch.eye(2, 136), torch.ones(2, 2))
        codes = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
        save_file({**fit.state_dict(), "codes": codes}, str(out / POSE_CODES_FILE))
        return out

    return data, cfg, folder


def test_trainer_uses_the_runs_landmark_cnn_and_rejects_faceless_data(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    data, cfg, folder = _pose_run(tmp_path, steps=2)
    with pytest.raises(UserError, match="cannot fit the landmark CNN.*faces with landmarks"):
        train(cfg, [str(data)], folder("faceless"))  # drawn discs: dlib finds no face to learn from

    out = folder("run")
    torch.manual_seed(0)
    save_landmarks(out / LANDMARK_FILE, LandmarkRegressor().eval(), torch.randn(6, 136) * 0.1)
    before = (out / LANDMARK_FILE).read_bytes()
    train(cfg, [str(data)], out)
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["loss_pose"] > 0 for r in records)
    assert (out / LANDMARK_FILE).read_bytes() == before  # reused, not rebuilt (and no teacher: not rewritten)

    (out / LANDMARK_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read the landmark CNN"):
        train(cfg, [str(data)], out, resume=True)


def test_teacher_follows_dlib_on_the_faces_it_is_shown(analyzer, real, real_analysis):  # noqa: F811
    """The teacher labels 'generated' faces with dlib (here real ones) and moves the regressor towards them."""
    images = real[0]
    torch.manual_seed(0)
    reg = LandmarkRegressor().eval().requires_grad_(False)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    targets = torch.from_numpy(normalise_landmarks(real_analysis.landmarks))
    with pytest.raises(ValueError, match="targets for"):
        LandmarkTeacher(reg, targets[:3], x)
    teacher = LandmarkTeacher(reg, targets, x, lr=1e-3)
    first = teacher.step(x)
    assert first["teacher_detected"] == pytest.approx(real_analysis.detected.mean())
    assert np.isfinite(first["teacher_fake_rmse"])
    for _ in range(15):
        last = teacher.step(x)
    assert last["teacher_fake_rmse"] < 0.7 * first["teacher_fake_rmse"]
    assert not any(p.requires_grad for p in reg.parameters())  # frozen again for the generator
    noise = torch.rand(6, 3, 64, 64) * 2 - 1
    stats = teacher.step(noise)  # no face found: a step on real faces only
    assert stats["teacher_detected"] == 0.0 and np.isnan(stats["teacher_fake_rmse"])


def test_trainer_runs_the_teacher_and_saves_the_taught_regressor(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from training.data import load_dataset, split_by_face

    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    data, cfg, folder = _pose_run(tmp_path, steps=4, teacher_every=2)
    ds = load_dataset([str(data)], 16000, 64)
    train_idx, _ = split_by_face(ds, cfg.train.val_fraction, cfg.train.seed)
    n_train_faces = len(np.unique(ds.face_index[train_idx]))
    torch.manual_seed(0)

    out = folder("nolabels")
    save_landmarks(out / LANDMARK_FILE, LandmarkRegressor().eval(), torch.full((n_train_faces, 136), float("nan")))
    with pytest.raises(UserError, match="none of the real faces has landmarks"):
        train(cfg, [str(data)], out)

    out = folder("run")
    save_landmarks(out / LANDMARK_FILE, LandmarkRegressor().eval(), torch.randn(n_train_faces, 136) * 0.1)
    before = load_file(str(out / LANDMARK_FILE))
    train(cfg, [str(data)], out)
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all("teacher_loss" in r for r in records[1:]) and records[-1]["teacher_detected"] == 0.0
    after = load_file(str(out / LANDMARK_FILE))
    assert torch.equal(after["real_targets"], before["real_targets"])
    changed = [k for k in before if k.startswith("regressor.") and not torch.equal(before[k], after[k])]
    assert changed  # the taught regressor was written with the checkpoint
