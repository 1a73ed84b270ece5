"""Landmark prior (training/landmarks.py): landmark normalisation and mirroring, the moment-matching loss, and the
trainer building, saving and reusing a run's prior. Real-face checks skip without ``../shared/data``."""

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
from training.landmarks import (
    MIRROR_68,
    LandmarkPrior,
    LandmarkRegressor,
    fit_landmark_regressor,
    mirror_landmarks,
    normalise_landmarks,
)
from training.trainer import LANDMARK_PRIOR_FILE, train


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


def test_prior_is_zero_on_its_own_faces_and_penalises_a_collapsed_batch():
    torch.manual_seed(0)
    faces = np.random.default_rng(0).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    prior = LandmarkPrior.from_faces(LandmarkRegressor().eval().requires_grad_(False), faces, components=4)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    c = prior.coordinates(x)
    assert c.shape == (40, 4)
    np.testing.assert_allclose(c.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(c.std(0).numpy(), 1.0, atol=1e-4)
    assert prior.loss(x).item() < 1e-6
    same = x[:1].repeat(8, 1, 1, 1).requires_grad_(True)
    loss = prior.loss(same)
    assert loss.item() >= 4.0 - 1e-4  # every component's spread is gone: (0 - 1)^2 each
    loss.backward()
    assert same.grad is not None and same.grad.abs().sum() > 0  # the generator gets a gradient
    # identity targets: each identity's own real faces score 0, pooled targets would not
    labels = np.repeat([0, 1], 20)
    prior.with_identity_targets(faces, labels, 2)
    lab = torch.from_numpy(labels)
    assert prior.loss(x, lab).item() < 1e-6
    assert prior.loss(x[:20], lab[:20]).item() < 1e-6 and prior.loss(x[:20]).item() > 1e-3
    swapped = prior.loss(x, 1 - lab).item()
    assert swapped > 1e-3
    # one-sided spread: a collapsed batch is penalised, a batch wider than the real faces is not
    assert prior.loss(same, match="spread").item() >= 4.0 - 1e-4
    pooled = LandmarkPrior(prior.regressor, prior.mean, prior.basis)
    pooled.coordinates = lambda images: images  # type: ignore[method-assign]  (whitened coordinates given)
    narrow, wide = 0.5 * torch.randn(64, 4), 2.0 * torch.randn(64, 4)
    assert pooled.loss(wide, match="spread").item() == 0.0  # wider than the real faces: not penalised
    assert pooled.loss(wide).item() > 1.0  # ... by the two-sided moments it is
    expected = (1 - narrow.std(0)).square().sum().item()
    assert pooled.loss(narrow, match="spread").item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="landmark_match"):
        prior.loss(x, match="median")
    with pytest.raises(ValueError, match="fewer than 2 faces"):
        prior.with_identity_targets(faces, np.r_[np.zeros(39, int), 1], 3)
    again = LandmarkPrior.from_state_dict(prior.state_dict())
    torch.testing.assert_close(again.coordinates(x), c)
    with pytest.raises(ValueError, match="landmark_components"):
        LandmarkPrior.from_faces(prior.regressor, faces, components=40)


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


def test_trainer_uses_the_runs_prior_and_rejects_faceless_data(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    data = make_wav2pix_dataset(tmp_path / "ds", identities=2, faces=4, snippets=2)
    cfg_dict = tiny_config_dict(steps=2)
    cfg_dict["loss"] = {"landmark_weight": 1.0, "landmark_components": 3, "landmark_fit_steps": 5}
    cfg = config_from_dict(cfg_dict)
    with pytest.raises(UserError, match="landmark prior.*faces with landmarks"):
        train(cfg, [str(data)], tmp_path / "faceless")  # drawn discs: dlib finds no face to learn from

    from safetensors.torch import save_file

    out = tmp_path / "run"
    out.mkdir()
    torch.manual_seed(0)
    faces = np.random.default_rng(1).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    prior = LandmarkPrior.from_faces(LandmarkRegressor().eval(), faces, components=3)
    save_file(prior.state_dict(), str(out / LANDMARK_PRIOR_FILE))
    before = (out / LANDMARK_PRIOR_FILE).read_bytes()
    train(cfg, [str(data)], out)
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["loss_landmark"] > 0 for r in records)
    assert (out / LANDMARK_PRIOR_FILE).read_bytes() == before  # reused, not rebuilt

    (out / LANDMARK_PRIOR_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read the landmark prior"):
        train(cfg, [str(data)], out, resume=True)


def test_teacher_follows_dlib_on_the_faces_it_is_shown(analyzer, real, real_analysis):  # noqa: F811
    """The teacher labels 'generated' faces with dlib (here real ones) and moves the regressor towards them."""
    from training.landmarks import LandmarkTeacher

    images = real[0]
    torch.manual_seed(0)
    prior = LandmarkPrior.from_faces(LandmarkRegressor().eval().requires_grad_(False), images, components=4)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with pytest.raises(ValueError, match="real_targets"):
        LandmarkTeacher(prior, x)
    prior.real_targets = torch.from_numpy(normalise_landmarks(real_analysis.landmarks))
    teacher = LandmarkTeacher(prior, x, lr=1e-3)
    first = teacher.step(x)
    assert first["teacher_detected"] == pytest.approx(real_analysis.detected.mean())
    assert np.isfinite(first["teacher_fake_rmse"])
    for _ in range(15):
        last = teacher.step(x)
    assert last["teacher_fake_rmse"] < 0.7 * first["teacher_fake_rmse"]
    assert not any(p.requires_grad for p in prior.regressor.parameters())  # frozen again for the generator
    noise = torch.rand(6, 3, 64, 64) * 2 - 1
    stats = teacher.step(noise)  # no face found: a step on real faces only
    assert stats["teacher_detected"] == 0.0 and np.isnan(stats["teacher_fake_rmse"])


def test_trainer_runs_the_teacher_and_saves_the_taught_regressor(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from training.data import load_dataset, split_by_face

    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    data = make_wav2pix_dataset(tmp_path / "ds", identities=2, faces=4, snippets=2)
    cfg_dict = tiny_config_dict(steps=4)
    cfg_dict["loss"] = {"landmark_weight": 1.0, "landmark_components": 3, "landmark_match": "spread",
                        "landmark_teacher_every": 2, "landmark_teacher_faces": 3}  # fmt: skip
    cfg = config_from_dict(cfg_dict)
    ds = load_dataset([str(data)], 16000, 64)
    train_idx, _ = split_by_face(ds, cfg.train.val_fraction, cfg.train.seed)
    n_train_faces = len(np.unique(ds.face_index[train_idx]))
    torch.manual_seed(0)
    faces = np.random.default_rng(1).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    prior = LandmarkPrior.from_faces(LandmarkRegressor().eval(), faces, components=3)

    out = tmp_path / "nolabels"
    out.mkdir()
    save_file(prior.state_dict(), str(out / LANDMARK_PRIOR_FILE))  # no real_targets: dlib finds no face here
    with pytest.raises(UserError, match="none of the real faces has landmarks"):
        train(cfg, [str(data)], out)

    out = tmp_path / "run"
    out.mkdir()
    prior.real_targets = torch.randn(n_train_faces, 136) * 0.1
    save_file(prior.state_dict(), str(out / LANDMARK_PRIOR_FILE))
    before = load_file(str(out / LANDMARK_PRIOR_FILE))
    train(cfg, [str(data)], out)
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all("teacher_loss" in r for r in records[1:]) and records[-1]["teacher_detected"] == 0.0
    after = load_file(str(out / LANDMARK_PRIOR_FILE))
    assert torch.equal(after["real_targets"], before["real_targets"])
    changed = [k for k in before if k.startswith("regressor.") and not torch.equal(before[k], after[k])]
    assert changed  # the taught regressor was written with the checkpoint
