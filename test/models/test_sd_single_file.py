"""Stable Diffusion from one original-layout file: the UNet and VAE of the 2D branch load from a CompVis-style
checkpoint (the file users download as v1-5-pruned-emaonly.safetensors), offline, into the configured
architectures, with the same weights and outputs as the diffusers models they came from."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ov3dseg_core.config import load_yaml
from ov3dseg_core.models.diffusion_features import DiffusionConfig, DiffusionFeatureExtractor
from upstream_checkpoints import original_sd_layout

DIFFUSION = load_yaml("xmask3d_tiny")["model"]["diffusion"]


def _config(**changes) -> DiffusionConfig:
    return DiffusionConfig(**{**DIFFUSION, **changes})


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = DiffusionFeatureExtractor(_config())
    for p in model.parameters():  # break the default init symmetry (zero-initialised output convolutions)
        p.data.normal_(0, 0.05)
    return model


def test_single_file_loads_the_same_unet_and_vae(reference, tmp_path):
    ldm = original_sd_layout(reference.unet.state_dict(), reference.vae.state_dict(), DIFFUSION["unet"],
                             DIFFUSION["vae"])
    assert any(k.startswith("model.diffusion_model.output_blocks.") for k in ldm)
    ldm["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(4)  # ignored
    path = tmp_path / "sd-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))

    loaded = DiffusionFeatureExtractor(_config(pretrained=str(path)))
    for name in ("unet", "vae"):
        want, got = getattr(reference, name).state_dict(), getattr(loaded, name).state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    image = torch.rand(1, 3, 64, 64)
    tokens = torch.randn(1, DIFFUSION["num_tokens"], reference.cross_attention_dim)
    reference.eval(), loaded.eval()
    with torch.no_grad():
        a, b = reference(image, tokens), loaded(image, tokens)
    assert len(a) == len(b) == len(reference.taps)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_single_file_that_does_not_fit_is_named(reference, tmp_path):
    ldm = original_sd_layout(reference.unet.state_dict(), reference.vae.state_dict(), DIFFUSION["unet"],
                             DIFFUSION["vae"])
    path = tmp_path / "sd-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))
    wider = {**DIFFUSION["unet"], "block_out_channels": [16, 32, 64]}
    with pytest.raises(ValueError, match="UNet of .* does not fit"):
        DiffusionFeatureExtractor(_config(pretrained=str(path), unet=wider))
    vae_only = tmp_path / "vae-only.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items() if k.startswith("first_stage_model.")}, str(vae_only))
    with pytest.raises(ValueError, match="not an original-layout Stable Diffusion"):
        DiffusionFeatureExtractor(_config(pretrained=str(vae_only)))


def test_xmask3d_checkpoints_leave_out_the_pretrained_diffusion_weights(reference, tmp_path):
    from ov3dseg_core.models.xmask3d import build_xmask3d
    from ov3dseg_core.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from ov3dseg_core.training.xmask3d import checkpoint_config, load_train_config, load_xmask3d

    sd_file = tmp_path / "sd-tiny.safetensors"
    ldm = original_sd_layout(reference.unet.state_dict(), reference.vae.state_dict(), DIFFUSION["unet"],
                             DIFFUSION["vae"])
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(sd_file))
    config = load_yaml("xmask3d_tiny")["model"]
    config["diffusion"]["pretrained"] = str(sd_file)
    torch.manual_seed(1)
    model = build_xmask3d(config)
    assert model.pretrained_prefixes() == ("diffusion.unet.", "diffusion.vae.", "diffusion.null_condition")
    stored = model.checkpoint_state_dict()
    assert not any(k.startswith("diffusion.unet.") or k.startswith("diffusion.vae.") for k in stored)
    assert any(k.startswith("backbone.") for k in stored) and len(stored) < len(model.state_dict())

    train = load_train_config("xmask3d_tiny")
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, Checkpoint(stored, checkpoint_config(model, train), model.base_classes))
    assert load_checkpoint(path).state_dict.keys() == stored.keys()
    loaded = load_xmask3d(path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="missing .*backbone"):
        loaded.load_checkpoint_state({k: v for k, v in stored.items() if not k.startswith("backbone.")})
