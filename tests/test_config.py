"""Strict typed configs: unknown keys, wrong types, NaN and out-of-range values are rejected before anything
starts (the NaN / range cases with file names: tests/test_trainer.py)."""

from __future__ import annotations

import pytest
import yaml

from engine.configs import ConfigError
from training.config import config_from_dict, load_config
from training.families.wav2pix.config import Wav2PixConfig


def test_defaults_round_trip(tmp_path):
    from engine import configs

    path = tmp_path / "c.yaml"
    configs.dump(Wav2PixConfig(), path)
    assert load_config(path) == Wav2PixConfig() == load_config(None)


def test_unknown_key_named_with_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"image_sise": 64}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key 'model\.image_sise'"):
        load_config(path)


def test_wrong_type_named():
    with pytest.raises(ConfigError, match=r"train\.batch_size.*integer"):
        config_from_dict({"train": {"batch_size": "32"}})
    with pytest.raises(ConfigError, match=r"model\.image_size.*one of 64, 128"):
        config_from_dict({"model": {"image_size": 96}})
    with pytest.raises(ConfigError, match=r"loss\.kind"):
        config_from_dict({"loss": {"kind": "wgan"}})
    with pytest.raises(ConfigError, match=r"train\.betas.*2 items"):
        config_from_dict({"train": {"betas": [0.5]}})


def test_int_accepted_for_float_and_bool_rejected_for_int():
    cfg = config_from_dict({"train": {"lr_g": 1, "betas": [0, 0]}})
    assert cfg.train.lr_g == 1.0 and cfg.train.betas == (0.0, 0.0) and isinstance(cfg.train.betas[0], float)
    with pytest.raises(ConfigError):
        config_from_dict({"train": {"steps": True}})


def test_unreadable_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_shipped_training_presets_load():
    """Every preset of the shipped recipe loads; a rejected experiment either loads or is refused because it uses
    an option that was removed (it stays as a record, docs/EXPERIMENTS.md)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "presets" / "training"
    assert len(list(root.glob("*.yaml"))) >= 8
    from training import families

    for path in sorted(root.glob("*.yaml")):
        family = load_config(path).family
        assert family in families.names() and (family == "wav2pix") == path.name.startswith("wav2pix-"), path
    for path in sorted(root.glob("rejected/*.yaml")):
        try:
            load_config(path)
        except ConfigError as exc:
            assert "this option was removed" in str(exc), path


def test_float_key_type():
    assert config_from_dict({"loss": {"aux_weight_g": 0}}).loss.aux_weight_g == 0.0
    with pytest.raises(ConfigError, match=r"loss\.aux_weight_g"):
        config_from_dict({"loss": {"aux_weight_g": "zero"}})
