"""Sparse U-Net backbones: shapes, batch independence, f3d, published parameter counts, Pointcept keys, checkpoints."""
from __future__ import annotations

import pytest
import torch

from ov3dseg_core.models.backbones import (
    SPUNET_PRESETS,
    CheckpointError,
    Mosaic3DSpUNet34C,
    SpUNet,
    SpUNet14A,
    SpUNetPDNorm,
    load_pointcept_checkpoint,
)
from ov3dseg_core.registry import REGISTRY

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def scene(seed: int, count: int, size: int = 24, channels: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    coords = torch.unique(torch.randint(0, size, (count, 3), generator=gen), dim=0)
    return coords, torch.randn(len(coords), channels, generator=gen)


def batch(*scenes: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        "grid_coord": torch.cat([c for c, _ in scenes]),
        "feat": torch.cat([f for _, f in scenes]),
        "offset": torch.cumsum(torch.tensor([len(c) for c, _ in scenes]), 0),
    }


@pytest.fixture(scope="module")
def net14a() -> SpUNet:
    torch.manual_seed(0)
    return SpUNet14A(6, 20).eval()


def test_forward_shapes_and_global_feature(net14a):
    data = batch(scene(0, 600), scene(1, 400))
    with torch.no_grad():
        features, f3d = net14a(data, return_global=True)
        plain = net14a(data)
    assert features.shape == (len(data["feat"]), 20) and f3d.shape == (2, 256)
    torch.testing.assert_close(plain, features)
    no_head = REGISTRY.build("backbone", {"type": "SpUNet14A", "in_channels": 6, "out_channels": 0}).eval()
    with torch.no_grad():
        assert no_head(data).shape == (len(data["feat"]), 96)


def test_global_feature_is_the_per_batch_mean_of_the_bottleneck(net14a):
    data = batch(scene(2, 500), scene(3, 300))
    captured = {}
    hook = net14a.enc[-1].register_forward_hook(lambda mod, inp, out: captured.setdefault("x", out))
    with torch.no_grad():
        _, f3d = net14a(data, return_global=True)
    hook.remove()
    x = captured["x"]
    for b in range(2):
        torch.testing.assert_close(f3d[b], x.features[x.indices[:, 0] == b].mean(dim=0))


def test_batch_elements_are_independent(net14a):
    first = scene(4, 500)
    with torch.no_grad():
        out_a, g_a = net14a(batch(first, scene(5, 300)), return_global=True)
        out_b, g_b = net14a(batch(first, scene(6, 700, size=30)), return_global=True)
        alone = net14a(batch(first))
    n = len(first[0])
    torch.testing.assert_close(out_a[:n], out_b[:n], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_a[:n], alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_a[0], g_b[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(g_a[1], g_b[1])


def test_output_rows_follow_input_rows(net14a):
    coords, feats = scene(7, 500)
    perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net14a(batch((coords, feats)))
        out_perm = net14a(batch((coords[perm], feats[perm])))
    torch.testing.assert_close(out[perm], out_perm, atol=1e-5, rtol=1e-4)


def test_backward_reaches_every_parameter_on_cpu():
    torch.manual_seed(1)
    net = SpUNet14A(6, 8).train()
    features, f3d = net(batch(scene(8, 400), scene(9, 300)), return_global=True)
    (features.square().mean() + f3d.square().mean()).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def expected_parameters(in_channels, out_channels, channels, layers, base=32, stem_k=5, final_bias=True,
                        norm=lambda c: 2 * c):
    """Parameter count of the published SpUNet architecture, written out layer by layer from Pointcept's code."""
    def conv(k, cin, cout):
        return k**3 * cin * cout

    def block(cin, cout):
        shortcut = conv(1, cin, cout) + norm(cout) if cin != cout else 0
        return conv(3, cin, cout) + norm(cout) + conv(3, cout, cout) + norm(cout) + shortcut

    stages = len(channels) // 2
    total = conv(stem_k, in_channels, base) + norm(base)
    enc_in = [base, *channels[: stages - 1]]
    for s in range(stages):
        total += conv(2, enc_in[s], channels[s]) + norm(channels[s]) + layers[s] * block(channels[s], channels[s])
        width = channels[-s - 1]
        total += conv(2, channels[-s - 2], width) + norm(width)
        total += block(width + enc_in[s], width) + (layers[-s - 1] - 1) * block(width, width)
    if out_channels:
        total += channels[-1] * out_channels + (out_channels if final_bias else 0)
    return total


@pytest.mark.parametrize("preset", sorted(SPUNET_PRESETS))
def test_preset_parameter_counts_match_the_published_architectures(preset):
    spec = SPUNET_PRESETS[preset]
    model = REGISTRY.build("backbone", {"type": preset, "in_channels": 6, "out_channels": 20})
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(6, 20, spec["channels"], spec["layers"])


def test_mosaic3d_encoder_has_the_papers_43_7m_parameters():
    # Mosaic3D (CVPR 2025) Sec. 5.1: "Sparse-UNet34C with 43.7M trainable parameters", trained with PPT on 5 datasets:
    # PDNorm = 5 affine BatchNorms (2C each) + SiLU/Linear(256 -> 2C) modulation; RGB in, 768-d Recap-CLIP out.
    spec = SPUNET_PRESETS["SpUNet34C"]
    expected = expected_parameters(3, 768, spec["channels"], spec["layers"], stem_k=3,
                                   norm=lambda c: 5 * 2 * c + 256 * 2 * c + 2 * c)
    model = Mosaic3DSpUNet34C()
    count = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("embedding_table."))
    assert count == expected == 43_685_664
    assert round(count / 1e6, 1) == 43.7
    assert model.embedding_table.weight.shape == (5, 256)  # PPT's context table, beside the encoder in Mosaic3D
    plain = SpUNet(3, 768, stem_kernel_size=3, final_bias=False, **spec)  # Mosaic3D's spunet34c.yaml without PPT
    assert sum(p.numel() for p in plain.parameters()) == expected_parameters(3, 768, stem_k=3, final_bias=False, **spec)


def pointcept_keys_14a() -> list[str]:
    """SpUNet-v1m1 state-dict keys for MinkUNet14A widths, read off Pointcept's spconv_unet_v1m1_base.py."""
    keys = ["conv_input.0.weight", *(f"conv_input.1.{k}" for k in BN)]
    for s in range(4):
        keys += [f"down.{s}.0.weight", *(f"down.{s}.1.{k}" for k in BN)]
        keys += [f"enc.{s}.block0.{p}" for p in ("conv1.weight", *(f"bn1.{k}" for k in BN), "conv2.weight",
                                                 *(f"bn2.{k}" for k in BN))]
        keys += [f"up.{s}.0.weight", *(f"up.{s}.1.{k}" for k in BN)]
        keys += [f"dec.{s}.block0.{p}" for p in ("proj.0.weight", *(f"proj.1.{k}" for k in BN), "conv1.weight",
                                                 *(f"bn1.{k}" for k in BN), "conv2.weight", *(f"bn2.{k}" for k in BN))]
    return keys + ["final.weight", "final.bias"]


def test_state_dict_keys_and_shapes_match_pointcept(net14a):
    state = net14a.state_dict()
    assert sorted(state) == sorted(pointcept_keys_14a())
    # spconv 2.x weight layout (out, k, k, k, in); stem 5x5x5; decoder block0 projects cat(up, skip).
    assert state["conv_input.0.weight"].shape == (32, 5, 5, 5, 6)
    assert state["down.0.0.weight"].shape == (32, 2, 2, 2, 32)
    assert state["up.3.0.weight"].shape == (128, 2, 2, 2, 256)
    assert state["dec.3.block0.proj.0.weight"].shape == (128, 1, 1, 1, 128 + 128)
    assert state["dec.0.block0.conv1.weight"].shape == (96, 3, 3, 3, 96 + 32)
    assert state["final.weight"].shape == (20, 1, 1, 1, 96)


def test_pdnorm_keys_match_mosaic3d():
    state = Mosaic3DSpUNet34C().state_dict()
    assert state["conv_input.conv.weight"].shape == (32, 3, 3, 3, 3)
    assert state["conv_input.bn.bns.4.running_var"].shape == (32,)
    assert state["conv_input.bn.modulation.1.weight"].shape == (64, 256)
    assert state["down.3.conv.weight"].shape == (256, 2, 2, 2, 128)
    assert state["up.0.bn.modulation.1.bias"].shape == (192,)
    assert state["dec.0.block0.proj_conv.weight"].shape == (96, 1, 1, 1, 96 + 32)
    assert "dec.0.block0.proj_norm.bns.0.weight" in state and "enc.0.block0.proj.0.weight" not in state
    assert state["final.weight"].shape == (768, 1, 1, 1, 96) and state["final.bias"].shape == (768,)


def test_pdnorm_condition_selects_the_norm_and_context_modulates():
    torch.manual_seed(2)
    net = SpUNetPDNorm(6, 8, conditions=("A", "B"), context_channels=4, **SPUNET_PRESETS["SpUNet14A"]).eval()
    data = batch(scene(10, 300))
    context = torch.ones(4)
    with torch.no_grad():
        a = net({**data, "condition": "A", "context": context})
        assert torch.equal(a, net({**data, "condition": "B", "context": context}))  # identical norms at init
        net.conv_input.bn.bns[1].weight.fill_(2.0)
        assert not torch.allclose(a, net({**data, "condition": "B", "context": context}))
        torch.testing.assert_close(a, net({**data, "condition": "A", "context": 3 * context}))  # zero-init modulation
        net.conv_input.bn.modulation[1].bias.fill_(0.5)
        assert not torch.allclose(a, net({**data, "condition": "A", "context": context}))
    with pytest.raises(ValueError, match="condition"):
        net({**data, "condition": "C", "context": context})
    with pytest.raises(ValueError, match="context"):
        net({**data, "condition": "A"})


def test_pointcept_checkpoint_round_trip(tmp_path, net14a):
    state = {f"module.backbone.{k}": v for k, v in net14a.state_dict().items()}
    state["module.seg_head.weight"] = torch.zeros(3, 3)
    path = tmp_path / "model_best.pth"
    torch.save({"epoch": 3, "state_dict": state}, path)
    fresh = SpUNet14A(6, 20).eval()
    report = load_pointcept_checkpoint(fresh, path, strict=True)
    assert report.prefix == "module.backbone." and report.complete
    assert report.ignored == ["module.seg_head.weight"] and len(report.loaded) == len(state) - 1
    data = batch(scene(11, 300))
    with torch.no_grad():
        torch.testing.assert_close(fresh(data), net14a(data))


def test_checkpoint_with_another_head_reports_mismatch(tmp_path, net14a):
    path = tmp_path / "mosaic.ckpt"
    state = {f"net.{k}": v for k, v in net14a.state_dict().items() if not k.startswith("final")}
    state["net.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, path)
    other = SpUNet14A(6, 20)
    report = load_pointcept_checkpoint(other, path)
    assert report.prefix == "net." and report.missing == ["final.bias", "final.weight"]
    assert report.unexpected == ["extra.weight"] and not report.mismatched
    other13 = SpUNet14A(6, 13)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net14a.state_dict().items()}}, path)
    report = load_pointcept_checkpoint(other13, path)
    assert {m[0] for m in report.mismatched} == {"final.weight", "final.bias"}
    with pytest.raises(CheckpointError, match="does not match"):
        load_pointcept_checkpoint(other13, path, strict=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pointcept_checkpoint(other13, tmp_path / "missing.pth")


def test_bad_input_is_rejected(net14a):
    coords, feats = scene(12, 200)
    good = batch((coords, feats))
    duplicated = coords.clone()
    duplicated[1] = duplicated[0]
    with pytest.raises(ValueError, match="duplicate"):
        net14a({**good, "grid_coord": duplicated})
    with pytest.raises(ValueError, match=">= 0"):
        net14a({**good, "grid_coord": coords - 1})
    with pytest.raises(ValueError, match="offset"):
        net14a({**good, "offset": torch.tensor([len(coords) - 1])})
    with pytest.raises(ValueError, match="feat"):
        net14a({**good, "feat": feats[:, :3]})
    with pytest.raises(KeyError, match="offset"):
        net14a({"grid_coord": coords, "feat": feats})
