"""The generic training loop with the wav2pix family: run folder contents, resume, load_run, --init-from, config
checks, and the two-process CPU (gloo) case under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from engine.errors import UserError
from tests.training_support import make_wav2pix_dataset, tiny_config_dict
from training.config import config_from_dict
from training.loop import train
from training.runs import latest_checkpoint, load_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_wav2pix_dataset(tmp_path_factory.mktemp("data") / "ds", identities=2, faces=4, snippets=2)


def test_run_folder_contents_and_resume(tmp_path, dataset, monkeypatch):
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    cfg = config_from_dict(tiny_config_dict(steps=4))
    out = tmp_path / "run"
    train(cfg, [str(dataset)], out, command="python run.py train ...")
    for name in ("config.yaml", "command.txt", "split.json", "log.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step-0000002.png", "step-0000004.png"]
    ckpt = latest_checkpoint(out)
    assert ckpt.name == "step-0000004.safetensors"
    with safe_open(str(ckpt), "pt") as fh:
        meta = fh.metadata()
        keys = set(fh.keys())
    assert meta["format_version"] == "2" and meta["step"] == "4"
    assert any(k.startswith("G_ema.") for k in keys) and any(k.startswith("opt_d/") for k in keys)
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    split = json.loads((out / "split.json").read_text())
    assert split["val_face_hashes"]

    with pytest.raises(UserError, match="--resume"):
        train(cfg, [str(dataset)], out)
    cfg6 = config_from_dict(tiny_config_dict(steps=6, lr_g=5e-5))
    train(cfg6, [str(dataset)], out, resume=True, command="python run.py train --resume ...")
    assert (out / "command.txt").read_text().splitlines() == [
        "python run.py train ...",
        "python run.py train --resume ...",
    ]
    assert "steps: 4" in (out / "config.until-step-4.yaml").read_text()
    assert "steps: 6" in (out / "config.yaml").read_text()
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records][-2:] == [5, 6]  # continued, did not restart
    from safetensors import safe_open as _open

    with _open(str(latest_checkpoint(out)), "pt") as fh:
        assert json.loads(fh.metadata()["opt_g_groups"])[0]["lr"] == cfg6.train.lr_g
    family, net, loaded_cfg, identities, info = load_run(out)
    assert family.name == "wav2pix" and info["step"] == 6 and identities == ["person0", "person1"] and loaded_cfg == cfg6
    audio = torch.zeros(2, 16000)
    img = net(audio, torch.zeros(2, loaded_cfg.model.noise_dim))
    assert img.shape == (2, 3, 64, 64) and img.abs().max() <= 1
    _, raw, _, _, raw_info = load_run(out, generator="raw")
    assert info["generator"] == "ema" and raw_info["generator"] == "raw"
    ema_w = dict(net.named_parameters())
    assert any(not torch.equal(w, ema_w[k]) for k, w in raw.named_parameters())  # the average differs from G
    with pytest.raises(UserError, match="generator"):
        load_run(out, generator="average")


def test_cli_rejects_unknown_key_before_training(tmp_path, dataset):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"stepz": 3}}))
    r = subprocess.run(
        [sys.executable, "run.py", "train", "--config", str(bad), "--data", str(dataset), "--out", str(tmp_path / "r")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "unknown key 'train.stepz'" in r.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # two processes under torchrun (~13 s)
def test_torchrun_two_process_cpu(tmp_path, dataset):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config_dict(steps=3, sample_every=3, checkpoint_every=3)))
    env = dict(os.environ, AVGAN_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "run.py",
        "train",
        "--config",
        str(cfg_path),
        "--data",
        str(dataset),
        "--out",
        str(tmp_path / "ddp"),
        "--device",
        "cpu",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert latest_checkpoint(tmp_path / "ddp").name == "step-0000003.safetensors"
    assert (tmp_path / "ddp" / "command.txt").read_text().startswith("torchrun --nproc_per_node=2")
    records = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 3  # only rank 0 logs


def test_resume_from_an_older_checkpoint_sets_later_log_records_aside(tmp_path, dataset, monkeypatch):
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    train(config_from_dict(tiny_config_dict(steps=4)), [str(dataset)], out)
    (out / "checkpoints" / "step-0000004.safetensors").unlink()  # back to step 2, as after a bad stretch
    train(config_from_dict(tiny_config_dict(steps=4)), [str(dataset)], out, resume=True)
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # no duplicates
    aside = [json.loads(x)["step"] for x in (out / "log.discarded-after-step-2.jsonl").read_text().splitlines()]
    assert aside == [3, 4]


def test_widen_from_keeps_the_images_and_rejects_unmappable_widths():
    """Net2WiderNet (Chen et al. 2016): each 16-channel stage copied twice gives the old images; noise on the
    copies' incoming weights breaks their symmetry; widths that are no integer multiple are refused."""
    import dataclasses

    from training.families.wav2pix import networks as wav2pix

    cfg = config_from_dict(tiny_config_dict())
    torch.manual_seed(0)
    old, _ = wav2pix.build(cfg.audio, cfg.model, 2)
    wide_model = dataclasses.replace(cfg.model, g_min_channels=32)  # 32,16,16,16,16 -> 32,32,32,32,32
    wide, _ = wav2pix.build(cfg.audio, wide_model, 2)
    assert wav2pix._stage_widths(wide.generator) == [32, 32, 32, 32, 32]
    audio = 0.1 * torch.randn(3, 16000, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(3, cfg.model.noise_dim, generator=torch.Generator().manual_seed(2))
    old.eval()
    with torch.no_grad():
        ref = old(audio, noise)
    wav2pix.widen_from(wide, old, noise_std=0.0)
    for mode in (False, True):  # eval, and train mode (one power iteration from the exact singular vectors)
        wide.train(mode)
        with torch.no_grad():
            assert (wide(audio, noise) - ref).abs().max() < 1e-4
    conv = [m for m in wide.generator.blocks if isinstance(m, torch.nn.Conv2d)][-1]
    w = conv.parametrizations.weight.original
    assert torch.equal(w[:16], w[16:])  # without noise the copies are identical
    wav2pix.widen_from(wide, old, noise_std=0.05, seed=3)
    assert not torch.equal(w[:16], w[16:])
    wide.eval()
    with torch.no_grad():
        diff = (wide(audio, noise) - ref).abs().mean()
    assert 0 < diff < 0.1
    # the moving average and the trained weights get the same noise for the same seed
    twin, _ = wav2pix.build(cfg.audio, wide_model, 2)
    wav2pix.widen_from(twin, old, noise_std=0.05, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), wide.state_dict().values()))

    odd, _ = wav2pix.build(cfg.audio, dataclasses.replace(cfg.model, g_min_channels=24), 2)
    with pytest.raises(ValueError, match="stage 1: 16 -> 24 channels"):
        wav2pix.widen_from(odd, old)
    with pytest.raises(ValueError, match="stage 1: 32 -> 16"):
        wav2pix.widen_from(old, wide)
    other, _ = wav2pix.build(cfg.audio, dataclasses.replace(wide_model, embedding_dim=8), 2)
    with pytest.raises(ValueError, match="encoder"):
        wav2pix.widen_from(other, old)


def test_init_from_a_narrower_run_continues_its_step_count(tmp_path, dataset, monkeypatch):
    """``run.py train --init-from``: a new run folder grows from another run's checkpoint."""
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    train(config_from_dict(tiny_config_dict(steps=2)), [str(dataset)], base)
    src = latest_checkpoint(base)
    wide_dict = tiny_config_dict(steps=4)
    wide_dict["model"]["g_min_channels"] = 32
    out = tmp_path / "wide"
    train(config_from_dict(wide_dict), [str(dataset)], out, init_from=src)
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 4]
    with safe_open(str(src), "pt") as a, safe_open(str(latest_checkpoint(out)), "pt") as b:
        assert b.metadata()["step"] == "4"
        assert (
            b.get_tensor("G.generator.to_rgb.weight").shape[1] == 2 * a.get_tensor("G.generator.to_rgb.weight").shape[1]
        )
    _, net, cfg, _, info = load_run(out)
    assert cfg.model.g_min_channels == 32 and info["step"] == 4
    # a resumed init-from run just continues; a discriminator of another width is refused, naming it
    train(
        config_from_dict({**wide_dict, "train": {**wide_dict["train"], "steps": 6}}),
        [str(dataset)],
        out,
        resume=True,
        init_from=src,
    )
    assert latest_checkpoint(out).name == "step-0000006.safetensors"
    bad = tiny_config_dict(steps=4)
    bad["model"]["d_channels"] = 16
    with pytest.raises(UserError, match="discriminator does not match"):
        train(config_from_dict(bad), [str(dataset)], tmp_path / "bad", init_from=src)


def test_init_from_a_bundle_warms_up_a_new_discriminator_then_trains_the_generator(tmp_path, dataset, monkeypatch):
    """``train --init-from BUNDLE_DIR``: both generators start from the bundle's weights, the discriminator from
    scratch at step 0; during ``train.d_warmup_steps`` only the discriminator moves."""
    from safetensors.torch import load_file

    from training.export import export_bundle
    from training.loop import main as train_main

    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    train(config_from_dict(tiny_config_dict(steps=2)), [str(dataset)], base)
    _, net, cfg, identities, _ = load_run(base)
    bundle = export_bundle(net, cfg, identities, tmp_path / "bundle", training_info={"command": "test"}, check=False)
    shipped = load_file(str(bundle / "generator.safetensors"))
    out = tmp_path / "fine"
    train(config_from_dict(tiny_config_dict(steps=4, d_warmup_steps=2)), [str(dataset)], out, init_from=bundle)
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # from step 0, not the base run's step
    assert all(r["loss_g"] is None or r["loss_g"] != r["loss_g"] for r in records[:2])  # NaN: no generator step
    assert all(r["loss_g"] == r["loss_g"] for r in records[2:])
    assert all(r.keys() == records[-1].keys() for r in records)  # the same statistics in both kinds of step
    warm, last = (load_file(str(out / "checkpoints" / f"step-000000{s}.safetensors")) for s in (2, 4))
    for name, value in shipped.items():
        if name.startswith("pose_prior.") or name.endswith(("._u", "._v")):  # spectral norm's power iteration runs
            continue
        assert torch.equal(warm[f"G.{name}"], value) and torch.equal(warm[f"G_ema.{name}"], value), name
    moved = [n for n in shipped if n.endswith("weight") and not torch.equal(last[f"G.{n}"], shipped[n])]
    assert moved  # after the warm-up the generator trains
    fresh_d = {k for k in warm if k.startswith("D.")}
    base_d = load_file(str(latest_checkpoint(base)))
    assert any(not torch.equal(warm[k], base_d[k]) for k in fresh_d)  # not the base run's discriminator
    # data with other identities (a capture session's): all but the speech identity head carried over
    others = make_wav2pix_dataset(tmp_path / "others", identities=3, faces=3, snippets=2)
    out3 = tmp_path / "others-run"
    train(config_from_dict(tiny_config_dict(steps=2, d_warmup_steps=2)), [str(others)], out3, init_from=bundle)
    three = load_file(str(out3 / "checkpoints" / "step-0000002.safetensors"))
    assert three["G.speech_classifier.weight"].shape[0] == 3
    assert torch.equal(three["G.generator.to_rgb.weight"], shipped["generator.to_rgb.weight"])
    # a folder that is not a bundle is refused by name, before anything is trained
    import argparse

    args = argparse.Namespace(
        config=None, data=[str(dataset)], out=str(tmp_path / "x"), resume=False, device="cpu", steps=None,
        dry_run=False, init_from=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(UserError, match="neither a checkpoint file nor a model bundle"):
        train_main(args)
    with pytest.raises(ValueError, match=r"train.d_warmup_steps': -1 out of range \[0, \+inf\]"):
        config_from_dict(tiny_config_dict(d_warmup_steps=-1))


def test_model_config_rejects_non_positive_widths():
    from engine.configs import ConfigError

    bad = tiny_config_dict()
    bad["model"]["g_min_channels"] = 0
    with pytest.raises(ConfigError, match="model.g_min_channels"):
        config_from_dict(bad)




@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "lr_g", float("nan"), "key 'train.lr_g': expected a finite number, got nan"),
        ("train", "lr_d", float("inf"), "key 'train.lr_d': expected a finite number, got inf"),
        ("train", "batch_size", -4, r"key 'train.batch_size': -4 out of range \[1, 65536\]"),
        ("train", "betas", [0.5, 1.5], r"key 'train.betas': \(0.5, 1.5\) out of range \[0, 0.9999\]"),
        ("loss", "mode_seeking_weight", -0.1, r"key 'loss.mode_seeking_weight': -0.1 out of range \[0, 100\]"),
        ("model", "encoder_channels", 12, "model.encoder_channels: expected a multiple of 8"),
        ("audio", "sample_rate", 0, r"key 'audio.sample_rate': 0 out of range \[1000, 192000\] Hz"),
    ],
)
def test_config_rejects_nan_inf_and_out_of_range_values_naming_file_and_key(tmp_path, section, key, value, message):
    """A NaN learning rate or a negative batch size is one error naming the file, the key, the value and the allowed
    range, before anything starts (these used to end in a torch traceback or a diverging run)."""
    from engine.configs import ConfigError
    from training.config import load_config

    data = tiny_config_dict()
    data.setdefault(section, {})[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(err.value).startswith(str(path))


def test_config_upgrades_the_old_layout_and_refuses_removed_options_that_are_on(tmp_path):
    """Configs of the single-family layout (``model.family``) load; options removed with the split load when
    off and are refused by name when on."""
    from engine.configs import ConfigError

    old = {"model": {**tiny_config_dict()["model"], "family": "wav2pix", "d_twin_classifier": False},
           "loss": {"r1_gamma": 0.0, "landmark_components": 8}, "train": {"cache_features": True}}  # fmt: skip
    cfg = config_from_dict(old)
    assert cfg.family == "wav2pix" and cfg.model.g_channels == 32
    for section, key, value in (("model", "appearance_code_dim", 4), ("loss", "r1_gamma", 1.0),
                                ("model", "d_minibatch_std", 4), ("loss", "landmark_weight", 0.5)):  # fmt: skip
        bad = {**old, section: {**old[section], key: value}}
        with pytest.raises(ConfigError, match=f"'{section}.{key}': {value!r}: this option was removed"):
            config_from_dict(bad)
    with pytest.raises(ConfigError, match="unknown model family 'nope'"):
        config_from_dict({"family": "nope"})
