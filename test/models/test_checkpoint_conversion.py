"""Released checkpoints -> our modules: fixtures with the upstream keys and shapes (test/data_files/checkpoint_keys)
and random values, converted with strict key matching, and the converted networks checked against brute-force
references of the source networks (MinkowskiEngine MinkUNet; Mosaic3D's 1x1 convs and PPT context)."""
from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np
import pytest
import torch

from ov3dseg_core import cli
from ov3dseg_core.config import load_yaml
from ov3dseg_core.models.backbones import (MOSAIC3D_CONDITION_SETS, MOSAIC3D_CONDITIONS, SPUNET_PRESETS,
                                           CheckpointError, convert_mosaic3d, convert_xmask3d, load_converted,
                                           load_converted_state)
from ov3dseg_core.models.backbones.convert import XMASK3D_MODEL_CONFIG, XMASK3D_PARTS
from ov3dseg_core.models.heads import BinaryHead
from ov3dseg_core.models.xmask3d import build_xmask3d
from ov3dseg_core.registry import REGISTRY
from upstream_checkpoints import key_shapes, mosaic3d_pointwise, random_state, reference_minkunet, scene, sparse

CALLED = []


def never_called(*args):
    """Stands for code a pickle names (a Lightning hyper-parameter's factory): reading weights must not run it."""
    CALLED.append(args)


class Callback:
    def __reduce__(self):
        return never_called, ("pickled callback",)


@pytest.fixture(scope="module")
def xmask3d(tmp_path_factory):
    """An XMask3D release-shaped ``b15n4.pth.tar`` (NumPy best_iou, as the upstream trainer saves) and its state."""
    state = random_state(key_shapes("xmask3d"), seed=0)
    path = tmp_path_factory.mktemp("xmask3d") / "b15n4.pth.tar"
    torch.save({"epoch": 128, "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
                "best_iou": np.float64(0.698)}, path)
    return path, state


def lightning_checkpoint(path, state):
    torch.save({"epoch": 127, "global_step": 10, "pytorch-lightning_version": "2.4.0", "state_dict": OrderedDict(state),
                "hyper_parameters": {"net": functools.partial(never_called, "net"), "callback": Callback()}}, path)
    return path


@pytest.fixture(scope="module")
def mosaic3d(tmp_path_factory):
    """A Mosaic3D release-shaped Lightning ``.ckpt`` (pickled hyper-parameters naming code) and its state."""
    state = random_state(key_shapes("mosaic3d_ppt"), seed=1)
    return lightning_checkpoint(tmp_path_factory.mktemp("mosaic3d") / "mosaic3d.ckpt", state), state


@pytest.fixture(scope="module")
def xmask3d_weights(xmask3d):
    return convert_xmask3d(xmask3d[0])


@pytest.fixture(scope="module")
def mosaic3d_weights(mosaic3d):
    return convert_mosaic3d(mosaic3d[0])


def voxels(seed: int, count: int = 60, extent: int = 6) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]:
    coords, feats = scene(seed, count, extent)
    data = {"grid_coord": torch.from_numpy(coords), "feat": torch.from_numpy(feats).float(),
            "offset": torch.tensor([count])}
    return coords, feats, data


def assert_close(ours: torch.Tensor, reference: np.ndarray) -> None:
    scale = np.abs(reference).max()
    assert scale > 1e-2
    np.testing.assert_allclose(ours.double().numpy(), reference, rtol=1e-3, atol=1e-4 * scale)


def test_key_lists_expand_to_the_upstream_module_sizes():
    shapes = key_shapes("xmask3d")
    encoder = {k: s for k, s in shapes.items() if k.startswith("module.pc_decoder.encoder.")}
    assert len(encoder) == 373 and encoder["module.pc_decoder.encoder.conv0p1s1.kernel"] == (125, 3, 32)
    # MinkUNet34C 3 -> 256: 37,878,688 weights and affine BatchNorm parameters.
    assert sum(np.prod(s) for k, s in encoder.items() if "running" not in k and "num_batches" not in k) == 37_878_688
    mosaic = key_shapes("mosaic3d_ppt")
    backbone = {k: s for k, s in mosaic.items() if k.startswith("net.backbone.")}
    trainable = sum(np.prod(s) for k, s in backbone.items() if "running" not in k and "num_batches" not in k)
    assert trainable == 43_685_664  # the paper's 43.7M encoder


def test_xmask3d_checkpoint_converts_every_3d_key_and_reports_the_rest(xmask3d, xmask3d_weights):
    _, state = xmask3d
    report = xmask3d_weights.report
    assert [(p.source, p.target) for p in report.parts] == [
        ("module.pc_decoder.encoder.", "backbone."), ("module.pc_decoder.decoder.", "proj_3d."),
        ("module.pc_decoder.point2text_adapter.", "captioner.adapter."),
        ("module.pc_binary_head.encoder.", "binary_head.backbone."),
        ("module.pc_binary_head.batch_norm.", "binary_head.norm."), ("module.pc_binary_head.fc.", "binary_head.fc.")]
    converted = sum(p.tensors for p in report.parts)
    skipped = {g.prefix: g.tensors for g in report.skipped}
    assert skipped == {"module.backbone.": 5, "module.sem_seg_head.": 1}
    assert converted + sum(skipped.values()) == len(state) == len(xmask3d_weights.state_dict) + 6
    assert all("2D branch" in g.reason for g in report.skipped)
    assert any(name.startswith("numpy.") for name in report.skipped_objects)  # best_iou, not unpickled
    assert report.model_config["backbone"] == {"type": "MinkUNet34C", "out_channels": 256}
    assert xmask3d_weights.state_dict["backbone.conv0p1s1.weight"].shape == (32, 5, 5, 5, 3)
    assert xmask3d_weights.state_dict["backbone.final.weight"].shape == (256, 1, 1, 1, 96)


@pytest.mark.parametrize("source, target, preset", [
    ("module.pc_decoder.encoder.", "backbone.", "MinkUNet34C"),
    ("module.pc_binary_head.encoder.", "binary_head.backbone.", "MinkUNet18A"),
])
def test_converted_minkunet_computes_the_minkowskiengine_network(xmask3d, xmask3d_weights, source, target, preset):
    _, state = xmask3d
    model = REGISTRY.build("backbone", {"type": preset, "in_channels": 3, "out_channels": 256}).eval()
    assert len(load_converted_state(model, xmask3d_weights, target)) == len(model.state_dict())
    coords, feats, data = voxels(seed=5)
    with torch.no_grad():
        ours = model(data)
    assert_close(ours, reference_minkunet(state, source, coords, feats))


def test_converted_binary_head_and_adapters_compute_xmask3ds(xmask3d, xmask3d_weights):
    _, state = xmask3d
    head = BinaryHead({"type": "MinkUNet18A", "in_channels": 3, "out_channels": 256}).eval()
    load_converted_state(head, xmask3d_weights, "binary_head.")
    coords, feats, data = voxels(seed=6)
    features = reference_minkunet(state, "module.pc_binary_head.encoder.", coords, feats)
    bn = {k: state[f"module.pc_binary_head.batch_norm.{k}"].double().numpy()
          for k in ("weight", "bias", "running_mean", "running_var")}
    hidden = np.maximum((features - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-5) * bn["weight"]
                        + bn["bias"], 0.0)
    logits = hidden @ state["module.pc_binary_head.fc.weight"].double().numpy().T + \
        state["module.pc_binary_head.fc.bias"].double().numpy()
    with torch.no_grad():
        assert_close(head(data), logits[:, 0])
    adapter = torch.nn.Linear(256, 768)
    load_converted_state(adapter, xmask3d_weights, "proj_3d.")
    assert torch.equal(adapter.weight, state["module.pc_decoder.decoder.weight"])


def test_converted_names_are_our_xmask3d_module_names():
    # The tiny XMask3D (32-d CLIP) with the model config the conversion reports: same module names as real size.
    model = build_xmask3d({**load_yaml("xmask3d_tiny")["model"], **XMASK3D_MODEL_CONFIG, "feature_dim": 32,
                           "captioner": {**XMASK3D_MODEL_CONFIG["captioner"], "latent_dim": 32}})
    names = set(model.state_dict())
    for part in XMASK3D_PARTS:
        ours = {k[len(part.target):] for k in names if k.startswith(part.target)}
        assert ours == set(part.build().state_dict()), part.name


def test_xmask3d_conversion_names_missing_and_unexpected_keys(tmp_path, xmask3d):
    _, state = xmask3d
    broken = {k: v for k, v in state.items() if k != "module.pc_decoder.encoder.block4.5.conv2.kernel"}
    broken["module.pc_decoder.encoder.block4.6.conv1.kernel"] = torch.zeros(27, 256, 256)
    torch.save({"state_dict": broken}, tmp_path / "broken.pth.tar")
    with pytest.raises(CheckpointError, match=r"missing \['block4\.5\.conv2\.weight'\], unexpected "
                                              r"\['block4\.6\.conv1\.weight'\]"):
        convert_xmask3d(tmp_path / "broken.pth.tar")


def test_mosaic3d_checkpoint_converts_to_the_release_preset_with_transposed_1x1s(mosaic3d, mosaic3d_weights):
    _, state = mosaic3d
    report = mosaic3d_weights.report
    config = report.model_config["backbone"]
    assert config["conditions"] == list(MOSAIC3D_CONDITIONS) == [
        "ScanNet", "ARKitScenes", "Matterport3D", "Structured3D", "ScanNetPP"]
    assert config["channels"] == list(SPUNET_PRESETS["SpUNet34C"]["channels"]) and config["context_table"]
    assert {g.prefix for g in report.skipped} == {"clip_encoder."}
    assert {"functools.partial", f"{__name__}.never_called"} <= set(report.skipped_objects)
    assert not CALLED
    transposed = [f"dec.{s}.block0.proj_conv.weight" for s in range(4)] + ["final.weight"]
    assert report.parts[0].transform.endswith(", ".join(transposed))
    preset = REGISTRY.build("backbone", {"type": "Mosaic3D-SpUNet34C"}).eval()  # the release preset as is
    assert len(load_converted_state(preset, mosaic3d_weights, "backbone.")) == len(preset.state_dict())
    rng = np.random.default_rng(7)
    for key in transposed:
        module = preset.get_submodule(key[: -len(".weight")])
        feats = rng.standard_normal((20, module.in_channels))
        with torch.no_grad():
            out = module(sparse(scene(8, 20, 4)[0], feats)).features
        bias = state.get("net.backbone." + key.replace("weight", "bias"))
        assert_close(out, mosaic3d_pointwise(feats, state["net.backbone." + key], bias))


def test_mosaic3d_context_is_the_table_row_of_the_condition(mosaic3d, mosaic3d_weights):
    _, state = mosaic3d
    model = REGISTRY.build("backbone", mosaic3d_weights.report.model_config["backbone"]).eval()
    load_converted_state(model, mosaic3d_weights, "backbone.")
    _, _, data = voxels(seed=9, count=80, extent=8)
    table = state["net.embedding_table.weight"]
    with torch.no_grad():
        implicit = model({**data, "condition": "ScanNetPP"})
        explicit = model({**data, "condition": "ScanNetPP", "context": table[4]})
        other_row = model({**data, "condition": "ScanNetPP", "context": table[2]})
    torch.testing.assert_close(implicit, explicit)
    assert not torch.allclose(implicit, other_row)


def test_three_dataset_mosaic3d_release_gets_its_condition_order(tmp_path, mosaic3d):
    _, state = mosaic3d
    three = {k: v for k, v in state.items() if not any(f".bns.{i}." in k for i in (3, 4))}
    three["net.embedding_table.weight"] = state["net.embedding_table.weight"][:3]
    weights = convert_mosaic3d(lightning_checkpoint(tmp_path / "sc_ar_scpp.ckpt", three))
    conditions = weights.report.model_config["backbone"]["conditions"]
    assert conditions == list(MOSAIC3D_CONDITION_SETS["sc+ar+sc++"]) == ["ScanNet", "ARKitScenes", "ScanNetPP"]
    with pytest.raises(CheckpointError, match="3 PPT conditions"):
        convert_mosaic3d(tmp_path / "sc_ar_scpp.ckpt", conditions=["ScanNet", "ScanNetPP"])


def test_convert_checkpoint_command(tmp_path, mosaic3d, xmask3d, capsys):
    out = tmp_path / "mosaic3d.safetensors"
    assert cli.main(["convert-checkpoint", str(mosaic3d[0]), "--format", "mosaic3d", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "net.backbone.* -> backbone.*" in printed and "dec.3.block0.proj_conv.weight" in printed
    assert "clip_encoder.* (3 tensors)" in printed and "no code run" in printed
    loaded = load_converted(out)
    assert loaded.report.model_config["backbone"]["conditions"][-1] == "ScanNetPP"
    assert set(loaded.state_dict) == {"backbone." + k for k in
                                      REGISTRY.build("backbone", {"type": "Mosaic3D-SpUNet34C"}).state_dict()}
    assert cli.main(["convert-checkpoint", str(mosaic3d[0]), "--format", "xmask3d", "--out", str(out)]) == 1
    assert "holds no XMask3D weights" in capsys.readouterr().err
    assert cli.main(["convert-checkpoint", str(xmask3d[0]), "--format", "xmask3d", "--out", "x.pt"]) == 2
