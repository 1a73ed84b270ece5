"""Export: bundle contents per docs/CONTRACTS.md, graph correctness, atomic replacement, CLI wiring."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.nn.utils import parametrize

import run
import training.export as tex
from engine.bundle import FORMAT_VERSION, load_bundle, sha256_file
from engine.errors import UserError
from training.config import load_config
from training.families.wav2pix.inference import Wav2PixInference
from training.families.wav2pix.networks import Wav2PixGenerator

torch.set_num_threads(1)

FILES = {"model.onnx", "model.pt2", "generator.safetensors", "config.yaml", "metrics.json", "TRAINING.md"}


def _inputs(cfg, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    audio = (torch.rand(batch, cfg.audio.window_samples, generator=g) * 2 - 1) * 0.4
    return audio, torch.randn(batch, cfg.model.noise_dim, generator=g)


def _graph(tiny_model, **options):
    from training.families import get
    from training.families.contract import GraphSource

    ns = argparse.Namespace(truncation=1.0, pose_prior="neighbours", calibrate_bank=None, **options)
    return tex.inference_graph(get("wav2pix"), tiny_model.cfg, tiny_model.net, tiny_model.identities, GraphSource(), ns)


def test_bundle_files_and_manifest(tiny_bundle: Path, tiny_model) -> None:
    cfg = tiny_model.cfg
    assert {p.name for p in tiny_bundle.iterdir()} == FILES | {"bundle.json"}
    m = json.loads((tiny_bundle / "bundle.json").read_text())
    assert m["format_version"] == FORMAT_VERSION == 2 and m["family"] == "wav2pix" and m["sample_rate"] == 16000
    assert {k: (v["shape"], v["fill"]) for k, v in m["inputs"].items()} == {
        "audio": ([None, 16000], "required"),
        "noise": ([None, 16], "normal"),
    }
    assert {k: v["shape"] for k, v in m["outputs"].items()} == {"image": [None, 3, 64, 64]}
    assert m["labels"] == tiny_model.identities
    assert m["family_info"] == {
        "truncation": 1.0, "pose_code_dim": 0, "pose_prior": "normal", "pose_prior_fit": None, "swap_red_blue": False,
    }  # fmt: skip
    assert set(m["files"]) == FILES
    for name, digest in m["files"].items():
        assert sha256_file(tiny_bundle / name) == digest
    assert m["training"]["command"] == "run.py train tiny" and m["training"]["steps"] == 3
    assert m["training"]["data"] == ["data/tiny"] and m["created"]
    assert load_config(tiny_bundle / "config.yaml") == cfg
    assert json.loads((tiny_bundle / "metrics.json").read_text()) == {"fid": 123.4, "identity_accuracy": 0.5}
    md = (tiny_bundle / "TRAINING.md").read_text()
    assert "run.py train tiny" in md and "data/tiny" in md and "wall time" in md
    assert oct((tiny_bundle / "model.onnx").stat().st_mode & 0o777) != oct(0o600)
    assert not [p for p in tiny_bundle.parent.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_onnx_graph_is_valid_with_dynamic_batch(tiny_bundle: Path) -> None:
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    inputs = {i.name: i.type.tensor_type.shape.dim for i in model.graph.input}
    assert set(inputs) == {"audio", "noise"} and [o.name for o in model.graph.output] == ["image"]
    for dims in inputs.values():
        assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert inputs["audio"][1].dim_value == 16000 and inputs["noise"][1].dim_value == 16


def test_pt2_dynamic_batch_matches_eager(tiny_bundle: Path, tiny_model) -> None:
    module = torch.export.load(str(tiny_bundle / "model.pt2")).module()
    eager = tiny_model.eager()
    with torch.inference_mode():
        for batch in (1, 7):
            audio, noise = _inputs(tiny_model.cfg, batch, seed=batch)
            assert torch.allclose(module(audio, noise), eager(audio, noise), atol=1e-5)


def test_baking_keeps_original_intact_and_matches(tiny_model) -> None:
    net = tiny_model.net
    audio, noise = _inputs(tiny_model.cfg, 2)
    with torch.no_grad():
        before = net(audio, noise)
        baked = tex.bake_parametrizations(net)
        after = net(audio, noise)  # the original still works (deepcopy shares the Parametrized* class)
        assert torch.equal(before, after)
        assert parametrize.is_parametrized(net.generator.fc)
        assert not any(parametrize.is_parametrized(m) for m in baked.modules())
        assert torch.allclose(baked(audio, noise), before, atol=1e-6)


def test_safetensors_reloads_into_generator(tiny_bundle: Path, tiny_model) -> None:
    from safetensors.torch import load_file

    cfg = tiny_model.cfg
    net = Wav2PixGenerator(cfg.audio, cfg.model, len(tiny_model.identities))
    net.load_state_dict(load_file(str(tiny_bundle / "generator.safetensors")))
    net.eval()
    audio, noise = _inputs(cfg, 2)
    with torch.no_grad():
        assert torch.allclose(net(audio, noise), tiny_model.net(audio, noise), atol=1e-6)


def test_legacy_exporter_fallback(tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.onnx.export

    def dynamo_fails(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("simulated dynamo failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    graph = _graph(tiny_model)
    module = graph.module
    used = tex.export_onnx(graph, tmp_path / "m.onnx", max_batch=8)
    assert "legacy" in used
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    audio, noise = _inputs(tiny_model.cfg, 3)
    got = session.run(None, {"audio": audio.numpy(), "noise": noise.numpy()})[0]
    with torch.inference_mode():
        assert np.abs(got - module(audio, noise).numpy()).max() <= 1e-3


def test_replace_existing_bundle_and_failed_check_keeps_old(
    tiny_bundle: Path, tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    cfg = tiny_model.cfg
    torch.manual_seed(1)
    other = Wav2PixGenerator(cfg.audio, cfg.model, 2).eval()
    info = {"command": "again", "data": [], "step": 9}
    tex.export_bundle(other, cfg, ["x", "y"], target, training_info=info, metrics=None, check=False)
    m = json.loads((target / "bundle.json").read_text())
    assert m["labels"] == ["x", "y"] and m["training"]["steps"] == 9
    assert json.loads((target / "metrics.json").read_text()) == {}
    before = (target / "bundle.json").read_bytes()

    monkeypatch.setattr(tex, "CHECK_TOLERANCE", -1.0)  # every comparison fails
    with pytest.raises(tex.ExportError, match="self-check failed: onnxruntime-cpu"):
        tex.export_bundle(tiny_model.net, cfg, ["a"], target, training_info=info)
    assert (target / "bundle.json").read_bytes() == before
    load_bundle(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"], "temp folders left behind"

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a model bundle"):
        tex.export_bundle(other, cfg, ["x"], junk, training_info=info, check=False)
    assert (junk / "notes.txt").read_text() == "mine"


def test_cli_export_wiring(tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.families import get

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"fid": 50.0}))
    (run_dir / "split.json").write_text(json.dumps({"data": ["/data/voices"]}))
    # the exported checkpoint is step 4: the run's later records are not its training time
    (run_dir / "log.jsonl").write_text('{"step": 2, "time": 100.0}\nnot json\n{"step": 4, "time": 160.5}\n'
                                       '{"step": 6, "time": 400.0}\n')

    def load_run(path, checkpoint=None, generator="ema"):
        assert Path(path) == run_dir and checkpoint is None
        info = {"step": 4, "command": "train it", "generator": generator}
        return get("wav2pix"), tiny_model.net, tiny_model.cfg, tiny_model.identities, info

    monkeypatch.setattr(tex.runs, "load_run", load_run)
    calls = []

    def fake_write(family, cfg, G, labels, graph, out_dir, *, training_info, metrics, max_batch):
        calls.append((labels, Path(out_dir), training_info, metrics, max_batch, graph))
        return Path(out_dir)

    monkeypatch.setattr(tex, "write_bundle", fake_write)
    monkeypatch.setattr(sys, "argv", ["run.py", "export"])
    assert run.main(["export", str(run_dir), "-o", str(tmp_path / "out")]) == 0
    labels, out, info, metrics, max_batch, graph = calls[0]
    assert out == tmp_path / "out" and labels == tiny_model.identities and max_batch == 1024
    assert metrics == {"fid": 50.0} and info["data"] == ["/data/voices"] and info["step"] == 4
    assert info["wall_time_s"] == 60.5 and "log.jsonl" in info["wall_time_source"]
    assert info["generator"] == "ema" and list(graph.inputs) == ["audio", "noise"]
    assert run.main(["export", str(run_dir), "-o", str(tmp_path / "out"), "--generator", "raw"]) == 0
    assert calls[1][2]["generator"] == "raw"
    assert run.main(["export", str(run_dir), "-o", str(tmp_path / "out"), "--truncation", "0.5"]) == 0
    assert calls[2][5].family_info["truncation"] == 0.5


def test_cli_missing_run_dir_is_one_line_error(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["run.py", "export"])
    assert run.main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "run folder not found" in err and "\n" not in err


def test_parser_has_documented_options() -> None:
    parser = argparse.ArgumentParser()
    tex.add_arguments(parser)
    args = parser.parse_args(["runs/x", "-o", "presets/models/y", "--max-batch", "64"])
    assert args.run_dir == Path("runs/x") and args.out == Path("presets/models/y") and args.max_batch == 64


def test_truncation_is_inside_the_graph_and_recorded(tiny_model, tmp_path: Path) -> None:
    from engine.generator import Generator
    from training.export import export_bundle

    out = export_bundle(
        tiny_model.net, tiny_model.cfg, tiny_model.identities, tmp_path / "psi", training_info={},
        options={"truncation": 0.5},
    )  # fmt: skip
    assert json.loads((out / "bundle.json").read_text())["family_info"]["truncation"] == 0.5
    audio, noise = _inputs(tiny_model.cfg, 2)
    gen = Generator(out, backend="onnxruntime", warmup=False)
    got = gen.run(audio=audio.numpy(), noise=noise.numpy())["image"]
    with torch.inference_mode():
        half = tiny_model.eager()(audio, noise * 0.5).numpy()
        full = tiny_model.eager()(audio, noise).numpy()
    assert np.abs(got - half).max() < 1e-3 and np.abs(got - full).max() > 1e-3
    with pytest.raises(ValueError, match="truncation"):
        Wav2PixInference(tiny_model.net, 0.0)


class _ZeroPixels(torch.nn.Module):
    """(audio, noise) -> the pixel norm of an all-zero feature map: 0 in torch, NaN without the epsilon."""

    def forward(self, audio: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        from training.layers import PixelNorm

        zeros = (noise[:, :4] * 0.0).view(-1, 4, 1, 1).expand(-1, 4, 2, 2)
        return PixelNorm()(zeros) + audio[:, :1, None, None] * 0.0


def test_exported_pixel_norm_keeps_its_epsilon(tiny_model, tmp_path: Path) -> None:
    import onnxruntime as ort

    graph = _graph(tiny_model)
    graph.module = _ZeroPixels().eval()
    used = tex.export_onnx(graph, tmp_path / "z.onnx", max_batch=4)
    assert "dynamo" in used
    session = ort.InferenceSession(str(tmp_path / "z.onnx"), providers=["CPUExecutionProvider"])
    audio, noise = _inputs(tiny_model.cfg, 2)
    got = session.run(None, {"audio": audio.numpy(), "noise": noise.numpy()})[0]
    assert np.isfinite(got).all() and np.all(got == 0.0)


def test_cli_exports_a_bundle_again_unchanged(tiny_bundle: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """``export BUNDLE -o NEW``: the same weights, manifest figures and outputs, through this version's exporter;
    run-only flags are refused, naming them."""
    from safetensors.torch import load_file

    from engine.generator import Generator

    monkeypatch.setattr(sys, "argv", ["run.py", "export"])
    out = tmp_path / "again"
    assert run.main(["export", str(tiny_bundle), "-o", str(out), "--max-batch", "8"]) == 0
    old, new = load_bundle(tiny_bundle), load_bundle(out)
    assert new.manifest["training"]["reexported_from"]["bundle"] == str(tiny_bundle)
    assert new.manifest["training"]["reexported_from"]["files"] == old.manifest["files"]
    assert new.manifest["export"]["pt2_max_batch"] == 8
    for key in ("labels", "family_info", "inputs", "outputs", "sample_rate"):
        assert new.manifest[key] == old.manifest[key], key
    assert (out / "metrics.json").read_text() == (tiny_bundle / "metrics.json").read_text()
    a, b = load_file(str(tiny_bundle / "generator.safetensors")), load_file(str(out / "generator.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    audio, noise = _inputs(load_config(tiny_bundle / "config.yaml"), 3, seed=7)
    got = Generator(out, backend="onnxruntime", warmup=False).run(audio=audio.numpy(), noise=noise.numpy())
    want = Generator(tiny_bundle, backend="onnxruntime", warmup=False).run(audio=audio.numpy(), noise=noise.numpy())
    assert np.abs(got["image"] - want["image"]).max() < 1e-5
    capsys.readouterr()
    assert run.main(["export", str(tiny_bundle), "-o", str(tmp_path / "x"), "--generator", "raw"]) == 2
    err = capsys.readouterr().err
    assert "--generator apply to run folders" in err and not (tmp_path / "x").exists()
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps({"frechet_distance": 0.5}))
    assert run.main(["export", str(out), "-o", str(out), "--metrics", str(figures)]) == 0  # in place
    assert json.loads((out / "metrics.json").read_text()) == {"frechet_distance": 0.5}
    assert load_bundle(out).manifest["training"]["reexported_from"]["bundle"] == str(out)  # hashes verified
    figures.write_text("[1, 2]")
    assert run.main(["export", str(out), "-o", str(tmp_path / "y"), "--metrics", str(figures)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err
