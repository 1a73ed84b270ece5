"""Appearance code (``model.appearance_code_dim``): the thumbnail code's fit, its differentiable reading of
generated images, the config's checks, the discriminator's growth from a pose-only run, and a run that
gains the code in place and exports it in the prior."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from engine.configs import ConfigError
from engine.errors import UserError
from tests.training_support import make_wav2pix_dataset, tiny_config_dict
from training.appearance import AppearanceCodes
from training.config import config_from_dict
from training.landmarks import PoseCodes
from training.models import wav2pix
from training.trainer import POSE_CODES_FILE, GanStep, latest_checkpoint, pose_prior_for_run, train


def _faces(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 faces [n, 32, 32, 3] of two identities (different base colours) whose brightness varies, labels,
    and the brightness offsets."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    bright = rng.normal(0, 30, n)
    base = np.where(labels[:, None] == 0, [[90, 120, 150]], [[150, 110, 80]]).astype(np.float64)
    img = base[:, None, None, :] + bright[:, None, None, None] + rng.normal(0, 8, (n, 32, 32, 3))
    return np.clip(img, 0, 255).astype(np.uint8), labels, bright


def test_appearance_code_is_standardised_per_identity_and_reads_the_image():
    faces, labels, bright = _faces()
    fit = AppearanceCodes.fit(faces, labels, 2, components=3, thumbnail=8)
    assert fit.thumbnail == 8 and fit.basis.shape == (3, 192) and fit.std.shape == (2, 3)
    c = fit.encode(faces, labels)
    assert c.shape == (60, 3) and c.dtype == np.float32
    for k in (0, 1):
        np.testing.assert_allclose(c[labels == k].mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(c[labels == k].std(0, ddof=1), 1.0, atol=1e-3)
        assert abs(np.corrcoef(c[labels == k, 0], bright[labels == k])[0, 1]) > 0.99  # the leading one: brightness
    # the differentiable reading of float images in [-1, 1] is the same code, and carries gradients
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).requires_grad_(True)
    y = torch.from_numpy(labels)
    read = fit.encode_images(x, y)
    np.testing.assert_allclose(read.detach().numpy(), c, atol=1e-4)
    read.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    again = AppearanceCodes.from_state_dict(fit.state_dict())
    assert set(fit.state_dict()) == {"appearance.mean", "appearance.basis", "appearance.std"}
    np.testing.assert_array_equal(again.encode(faces, labels), c)
    with pytest.raises(ValueError, match="appearance_code_dim: expected 1.."):
        AppearanceCodes.fit(faces, labels, 2, components=193, thumbnail=8)
    with pytest.raises(ValueError, match=r"identities \[1\] have fewer than 2 faces"):
        AppearanceCodes.fit(faces[:3], labels[:3], 2, components=1, thumbnail=8)
    with pytest.raises(ValueError, match="H, W multiples of 8"):
        fit.encode_images(torch.zeros(1, 3, 30, 30), torch.zeros(1, dtype=torch.long))


def test_config_checks_the_appearance_code():
    d = tiny_config_dict()
    d["model"].update(pose_code_dim=2, appearance_code_dim=3)
    cfg = config_from_dict(d)
    assert cfg.model.code_dim == 5
    with pytest.raises(ConfigError, match="appearance_code_dim > 0 needs model.pose_code_dim"):
        config_from_dict({**d, "model": {**d["model"], "pose_code_dim": 0}})
    with pytest.raises(ConfigError, match="model.appearance_code_dim: expected 0.."):
        config_from_dict({**d, "model": {**d["model"], "appearance_code_dim": d["model"].get("noise_dim", 128)}})
    with pytest.raises(ConfigError, match="model.appearance_thumbnail: expected a divisor of image_size"):
        config_from_dict({**d, "model": {**d["model"], "appearance_thumbnail": 24}})
    with pytest.raises(ConfigError, match="appearance_code_weight > 0 needs model.appearance_code_dim"):
        config_from_dict(
            {**d, "model": {**d["model"], "appearance_code_dim": 0}, "loss": {"appearance_code_weight": 1}}
        )
    with pytest.raises(ConfigError, match="appearance_code_weight: expected >= 0"):
        config_from_dict({**d, "loss": {"appearance_code_weight": -1}})


def test_discriminator_grows_code_columns_and_scores_as_before():
    d = tiny_config_dict()
    d["model"]["pose_code_dim"] = 2
    old_cfg = config_from_dict(d)
    d["model"]["appearance_code_dim"] = 3
    new_cfg = config_from_dict(d)
    torch.manual_seed(0)
    _, old = wav2pix.build(old_cfg.audio, old_cfg.model, 2)
    torch.nn.init.normal_(old.pose_embed.weight)
    _, new = wav2pix.build(new_cfg.audio, new_cfg.model, 2)
    state, extended = wav2pix.discriminator_state_from(new, old.state_dict())
    assert extended == ["pose_embed.weight"]
    new.load_state_dict(state)
    x, e, code = torch.rand(4, 3, 64, 64) * 2 - 1, torch.randn(4, new_cfg.model.embedding_dim), torch.randn(4, 5)
    old.eval(), new.eval()
    with torch.no_grad():
        torch.testing.assert_close(new(x, e, pose=code)[0], old(x, e, pose=code[:, :2])[0])


def test_training_step_regresses_the_appearance_code():
    d = tiny_config_dict()
    d["model"].update(pose_code_dim=2, appearance_code_dim=3, appearance_thumbnail=8)
    d["loss"] = {"appearance_code_weight": 1.0}
    d["augment"] = {"enabled": False}
    cfg = config_from_dict(d)
    torch.manual_seed(0)
    net, disc = wav2pix.build(cfg.audio, cfg.model, 2)
    opts = torch.optim.Adam(net.parameters()), torch.optim.Adam(disc.parameters())
    with pytest.raises(ValueError, match="appearance_code_weight > 0 needs the appearance codes' fit"):
        GanStep(cfg, net, disc, *opts)
    faces, labels, _ = _faces(8)
    fit = AppearanceCodes.fit(np.repeat(np.repeat(faces, 2, 1), 2, 2), labels, 2, components=3, thumbnail=8)
    step = GanStep(cfg, net, disc, *opts, appearance_codes=fit)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    y = torch.tensor([0, 1, 0, 1])
    feats = net.encoder.features_of(torch.randn(4, cfg.audio.window_samples) * 0.1)
    stats = step(x, y, feats, torch.tensor([1, 0, 3, 2]), torch.randn(4, 5), None)
    assert stats["loss_appearance"] > 0 and stats["loss_pose"] == 0.0
    with pytest.raises(ValueError, match="appearance_code_dim is 5, got pose \\(4, 2\\)"):
        step(x, y, feats, torch.tensor([1, 0, 3, 2]), torch.randn(4, 2), None)


def test_a_pose_code_run_gains_the_appearance_code_and_exports_it(tmp_path, monkeypatch):
    """The branch the default model took: a run with a pose code (its codes file copied over) grows an appearance
    code in place, trains with it, and ``export`` puts the joint prior in the graph."""
    from safetensors.torch import load_file, save_file

    from training import export

    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    data = make_wav2pix_dataset(tmp_path / "ds", identities=2, faces=4, snippets=2)
    d = tiny_config_dict(steps=2)
    d["model"]["pose_code_dim"] = 2
    pose_codes = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    fit = PoseCodes(torch.zeros(2, 136), torch.eye(2, 136), torch.ones(2, 2))
    base = tmp_path / "base"
    base.mkdir()
    save_file({**fit.state_dict(), "codes": pose_codes}, str(base / POSE_CODES_FILE))
    train(config_from_dict(d), [str(data)], base)

    d = tiny_config_dict(steps=4)
    d["model"].update(pose_code_dim=2, appearance_code_dim=3, appearance_thumbnail=8)
    d["loss"] = {"appearance_code_weight": 1.0}
    cfg = config_from_dict(d)
    out = tmp_path / "run"
    out.mkdir()
    (out / POSE_CODES_FILE).write_bytes((base / POSE_CODES_FILE).read_bytes())
    train(cfg, [str(data)], out, init_from=latest_checkpoint(base))
    stored = load_file(str(out / POSE_CODES_FILE))
    assert stored["codes"].shape == (8, 5) and "appearance.basis" in stored
    torch.testing.assert_close(stored["codes"][:, :2], pose_codes)  # the pose entries are kept
    train_faces = stored["codes"][:, 2:].abs().sum(1) > 0  # validation faces: zero appearance code
    assert 0 < int(train_faces.sum()) < 8
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["loss_appearance"] > 0 for r in records if r["step"] > 2)
    prior = pose_prior_for_run(out, cfg, "copula")
    assert prior is not None and prior.code_dim == 5
    # the neighbours prior: a bank of the training pairs' speech embeddings and their faces' whole codes
    from training.trainer import load_run

    net, *_ = load_run(out)
    with pytest.raises(UserError, match="needs the generator"):
        pose_prior_for_run(out, cfg, "neighbours")
    bank = pose_prior_for_run(out, cfg, "neighbours", net)
    assert isinstance(bank, wav2pix.NeighbourPosePrior) and bank.code_dim == 5
    n_train = int(train_faces.sum()) * 2  # 2 snippets per face
    assert bank.fit_report["pairs"] == n_train and len(bank.bank_codes) == n_train
    assert all(any(torch.equal(c, row) for row in stored["codes"]) for c in bank.bank_codes)

    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    bundle = tmp_path / "bundle"
    assert export.main(parser.parse_args([str(out), "-o", str(bundle), "--pose-prior", "copula"])) == 0
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["pose_code_dim"] == 2 and manifest["appearance_code_dim"] == 3
    assert manifest["pose_prior"] == "copula"
    _, in_bundle = export.split_pose_prior(load_file(str(bundle / "generator.safetensors")))
    assert in_bundle is not None and in_bundle.code_dim == 5
