"""The neighbours bank's calibration (training/families/wav2pix/bank_calibration.py): the choice, the prior it builds,
export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import run
from tests.training_support import make_wav2pix_dataset
from training import face_metrics as fm
from training.families.wav2pix import bank_calibration as bc
from training.families.wav2pix.prior import NeighbourPosePrior


def _synthetic(seed: int = 0):
    """Two identities of 300 bank rows and 300 real faces each, 8-d embeddings. Identity 0's renderings are
    too narrow at gain 1 (0.5x the real spread) and right at gain 1.3; identity 1's are right at both gains
    for 70 % of its rows, and the other 30 % are far off (and far from their own real faces)."""
    rng = np.random.default_rng(seed)
    n, e = 300, 8
    real = np.concatenate([rng.standard_normal((n, e)), rng.standard_normal((n, e)) + 5.0]).astype(np.float32)
    real_labels = np.repeat([0, 1], n)
    row_labels = np.repeat([0, 1], n)
    own = real.copy()  # row r's own face is real face r
    bad = np.zeros(2 * n, bool)
    bad[n + rng.choice(n, int(0.3 * n), replace=False)] = True
    rendered = {}
    for g in (1.0, 1.3):
        x = own.copy()
        x[:n] = own[:n] * (0.5 if g == 1.0 else 1.0) + 0.05 * rng.standard_normal((n, e))
        x[n:] = own[n:] + 0.05 * rng.standard_normal((n, e))
        x[bad] = own[bad] + 6.0 + rng.standard_normal((int(bad.sum()), e))  # a smeared face: far off
        rendered[g] = x.astype(np.float32)
    return rendered, own, row_labels, real, real_labels, bad


def test_choice_undoes_a_timid_generator_and_drops_the_rows_it_cannot_draw():
    rendered, own, row_labels, real, real_labels, bad = _synthetic()
    keep, row_gain, cal = bc.choose_calibration(rendered, own, row_labels, real, real_labels, ["a", "b"])
    assert cal.gain["a"] == 1.3 and cal.kept_share["a"] == 1.0  # the narrow renderings are widened
    assert cal.gain["b"] == 1.0 and cal.kept_share["b"] == pytest.approx(0.7)  # exactly the far-off rows go
    assert keep[:300].all() and not keep[bad].any() and keep[300:][~bad[300:]].all()
    assert (row_gain[:300] == 1.3).all() and (row_gain[300:] == 1.0).all()
    assert cal.rows_kept == int(keep.sum()) == 600 - int(bad.sum())
    for name in ("a", "b"):  # the winner is the lowest of the table, and better than the bank as it was
        rows = [r for r in cal.table if r["identity"] == name]
        assert cal.frechet[name] == min(r["frechet_distance"] for r in rows) < cal.frechet_uncalibrated[name]
    # the figures are what face_metrics says of the chosen renderings
    assert cal.frechet["b"] == pytest.approx(fm.frechet_distance(rendered[1.0][keep & (row_labels == 1)], real[300:]))
    report = cal.report()
    assert json.loads(json.dumps(report))["gain"] == {"a": 1.3, "b": 1.0}
    with pytest.raises(ValueError, match="expected gain 1.0"):
        bc.choose_calibration({1.3: rendered[1.3]}, own, row_labels, real, real_labels, ["a", "b"])
    with pytest.raises(ValueError, match="kept shares must lie in"):
        bc.choose_calibration(rendered, own, row_labels, real, real_labels, ["a", "b"], shares=(1.0, 0.0))
    with pytest.raises(ValueError, match="599 renderings"):
        bc.choose_calibration({1.0: rendered[1.0][:599]}, own, row_labels, real, real_labels, ["a", "b"])


def test_calibrated_prior_keeps_rows_and_scales_their_codes():
    g = torch.Generator().manual_seed(0)
    prior = NeighbourPosePrior.from_embeddings(
        torch.randn(20, 6, generator=g), torch.randn(20, 3, generator=g), 4
    )
    keep = np.ones(20, bool)
    keep[[3, 7]] = False
    gain = np.where(np.arange(20) < 10, 1.3, 1.0).astype(np.float32)
    out = bc.calibrated_prior(prior, keep, gain)
    assert out.bank_codes.shape == (18, 3) and out.k == 4
    want = prior.bank_codes[torch.from_numpy(keep)] * torch.from_numpy(gain[keep])[:, None]
    assert torch.allclose(out.bank_codes, want)
    # same search: a voice that sits on a kept bank row still finds it first
    e = prior.bank_embeddings[0] @ prior.bank_projection.pinverse() + prior.bank_center
    noise = torch.full((1, 5), -9.0)  # Phi(-9) ~ 0: the nearest neighbour's code
    assert torch.allclose(out(noise, e[None])[0, :3], prior.bank_codes[0] * 1.3, atol=1e-5)
    with pytest.raises(ValueError, match="no bank row kept"):
        bc.calibrated_prior(prior, np.zeros(20, bool), gain)
    with pytest.raises(ValueError, match="masks for 19"):
        bc.calibrated_prior(prior, keep[:19], gain)


@pytest.fixture()
def neighbours_bundle(tmp_path):
    """A tiny pose-code model exported with a neighbours bank of a tiny two-person dataset's training pairs."""
    import dataclasses

    from tests.conftest import tiny_config
    from training.data import load_dataset, split_by_face
    from training.export import export_bundle
    from training.families.contract import GraphSource
    from training.families.wav2pix.networks import Wav2PixGenerator

    data = make_wav2pix_dataset(tmp_path / "data", identities=2, faces=5, snippets=2)
    base = tiny_config()
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, pose_code_dim=3))
    ds = load_dataset([data], cfg.audio.sample_rate, cfg.model.image_size)
    train_idx, _ = split_by_face(ds, cfg.train.val_fraction, cfg.train.seed)
    torch.manual_seed(0)
    identities = ["person0", "person1", "person2"]
    net = Wav2PixGenerator(cfg.audio, cfg.model, len(identities)).eval()
    with torch.no_grad():
        emb = net.encoder(torch.from_numpy(ds.windows(train_idx, cfg.audio.window_samples)))
    codes = torch.randn(len(train_idx), 3, generator=torch.Generator().manual_seed(1))
    prior = NeighbourPosePrior.from_embeddings(emb, codes, 2)
    tensors = {f"pose_prior.{k}": v for k, v in prior.state_dict().items()}
    bundle = export_bundle(
        net, cfg, identities, tmp_path / "b", training_info={"data": [str(data)]}, metrics={"fd": 1.0},
        source=GraphSource(bundle_tensors=tensors, family_info={"pose_prior_fit": {"pairs": len(train_idx)}}),
    )  # fmt: skip
    return bundle, data, prior, len(train_idx)


@pytest.mark.slow  # real dlib over a tiny dataset (~20 s)
def test_export_calibrates_a_bundles_bank_on_its_training_data(neighbours_bundle, tmp_path, capsys):
    """End to end with dlib: ``export BUNDLE -o OUT --calibrate-bank`` finds the bank's pairs in the bundle's
    training data, renders them, and writes a bundle whose bank and record say what was chosen."""
    from engine.errors import UserError
    from training.export import load_bundle_source

    bundle, data, prior, n = neighbours_bundle
    out = tmp_path / "calibrated"
    assert run.main(["export", str(bundle), "-o", str(out), "--calibrate-bank"]) == 0
    src = load_bundle_source(out)
    cal = src.manifest["family_info"]["pose_prior_fit"]["calibration"]
    got = NeighbourPosePrior.from_state_dict({k[11:]: v for k, v in src.extra_tensors.items()})
    assert set(cal["gain"]) == {"person0", "person1"} and cal["rows_total"] == n
    assert len(got.bank_codes) == cal["rows_kept"] <= n
    assert json.loads((out / "metrics.json").read_text()) == {}  # the old figures were of the uncalibrated bank
    # every kept code is an original code times its identity's gain
    gains = sorted(set(cal["gain"].values()))
    assert all(
        any(torch.allclose(c, o * g, atol=1e-5) for o in prior.bank_codes for g in gains) for c in got.bank_codes
    )
    capsys.readouterr()
    assert run.main(["export", str(out), "-o", str(tmp_path / "again"), "--calibrate-bank"]) == 2
    assert "calibrated already" in capsys.readouterr().err
    # another dataset: the bank's rows match none of its pairs
    other = make_wav2pix_dataset(tmp_path / "other", identities=2, faces=3, snippets=1, seconds=0.5)
    assert run.main(["export", str(bundle), "-o", str(tmp_path / "x"), "--calibrate-bank", "--data", str(other)]) == 2
    assert "match no training pair" in capsys.readouterr().err
    src = load_bundle_source(bundle)
    with pytest.raises(UserError, match="needs the training data"):
        bc.calibrate_on_data(src.G, src.cfg, prior, src.labels, [])
    with pytest.raises(UserError, match="identities the model does not know"):
        bc.calibrate_on_data(src.G, src.cfg, prior, ["person0", "someone"], [str(data)])


def test_calibrate_bank_refuses_a_bundle_without_a_neighbours_prior(tiny_bundle, tmp_path, capsys):
    assert run.main(["export", str(tiny_bundle), "-o", str(tmp_path / "o"), "--calibrate-bank"]) == 2
    assert "needs the neighbours pose prior" in capsys.readouterr().err


def test_export_of_a_run_calibrates_on_its_split_by_default(tmp_path, monkeypatch):
    """``export RUN`` of a pose-code run calibrates the neighbours bank (the shipped recipe) on the run's data and
    validation faces (split.json); ``--no-calibrate-bank`` skips it and ``--data`` overrides the folders."""
    import dataclasses

    import training.export as tex
    from tests.conftest import tiny_config
    from training.families import get
    from training.families.wav2pix import prior as prior_module
    from training.families.wav2pix import trainer as trainer_module
    from training.families.wav2pix.networks import Wav2PixGenerator

    base = tiny_config()
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, pose_code_dim=2))
    net = Wav2PixGenerator(cfg.audio, cfg.model, 1).eval()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "split.json").write_text(json.dumps({"data": ["/data/voices"], "val_face_hashes": ["abc"]}))
    g = torch.Generator().manual_seed(0)
    bank = NeighbourPosePrior.from_embeddings(torch.randn(6, 32, generator=g), torch.randn(6, 2), 2)
    calibrated = bc.calibrated_prior(bank, np.arange(6) < 4, np.full(6, 1.3, np.float32))
    calibrated.fit_report = {"calibration": {"rows_kept": 4}}
    monkeypatch.setattr(tex.runs, "load_run", lambda path, checkpoint=None, generator="ema": (
        get("wav2pix"), net, cfg, ["a"], {"step": 1}))  # fmt: skip
    monkeypatch.setattr(trainer_module, "read_pose_codes", lambda path: (np.zeros((6, 2)), None))
    monkeypatch.setattr(prior_module, "neighbour_prior_for_run", lambda run_dir, cfg, codes, G, data: bank)
    seen = []

    def fake_calibrate(G, cfg, prior, identities, data_dirs, val_face_hashes=None, **kw):
        seen.append((prior, identities, list(data_dirs), val_face_hashes))
        return calibrated, None

    monkeypatch.setattr(bc, "calibrate_on_data", fake_calibrate)
    exported = []
    monkeypatch.setattr(tex, "write_bundle", lambda family, cfg, G, labels, graph, out, **kw: exported.append(graph) or out)
    monkeypatch.setattr("sys.argv", ["run.py"])
    args = ["export", str(run_dir), "-o", str(tmp_path / "o")]
    assert run.main(args) == 0
    assert seen == [(bank, ["a"], ["/data/voices"], {"abc"})]
    assert exported[0].family_info["pose_prior_fit"] == {"calibration": {"rows_kept": 4}}
    assert run.main([*args, "--data", "/elsewhere"]) == 0
    assert seen[1][2] == ["/elsewhere"]
    assert run.main([*args, "--no-calibrate-bank"]) == 0
    assert len(seen) == 2 and exported[2].family_info["pose_prior"] == "neighbours"
    assert run.main([*args, "--pose-prior", "normal", "--calibrate-bank"]) == 2  # refused: no neighbours prior
