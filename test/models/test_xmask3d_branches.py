"""XMask3D's 2D branch pieces at toy size: MaskCLIP (Eq. 9-11) cross-checked against open_clip, the frozen diffusion
feature extractor (Eq. 2-4), the implicit captioner and the pixel / mask decoders."""
import math

import pytest
import torch

from ov3dseg_core.config import from_dict, load_yaml
from ov3dseg_core.models.captioner import ImplicitCaptioner
from ov3dseg_core.models.diffusion_features import DiffusionConfig, DiffusionFeatureExtractor, MultiScaleProjection
from ov3dseg_core.models.mask_decoder import MaskDecoder
from ov3dseg_core.models.maskclip import MaskCLIP, maskclip_attention_mask, open_clip
from ov3dseg_core.models.pixel_decoder import PixelDecoder
from ov3dseg_core.models.text import TINY_CLIP, register_open_clip_configs

TINY = load_yaml("xmask3d_tiny")["model"]


@pytest.fixture(scope="module")
def clip_model():
    register_open_clip_configs()
    torch.manual_seed(0)
    return open_clip.create_model(TINY_CLIP).eval()


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return DiffusionFeatureExtractor(from_dict(DiffusionConfig, TINY["diffusion"]))


def test_attention_mask_eq10_eq11():
    # 2 masks, 3 patches: mask 0 touches patches 0 and 2, mask 1 none
    hit = torch.tensor([[[True, False, True], [False, False, False]]])
    got = maskclip_attention_mask(hit)[0]
    T, F_ = True, False
    want = torch.tensor([
        # cls p0  p1  p2  m0  m1
        [F_, F_, F_, F_, T, T],  # class token: image tokens only
        [F_, F_, F_, F_, T, T],
        [F_, F_, F_, F_, T, T],
        [F_, F_, F_, F_, T, T],
        [F_, F_, T, F_, T, T],  # mask 0: class token + its patches (P of Eq. 11), no mask token
        [F_, T, T, T, T, T],  # mask 1: the class token only
    ])
    assert torch.equal(got, want)


def test_maskclip_matches_open_clip(clip_model):
    mc = MaskCLIP(clip_model.visual)
    image = torch.rand(2, 3, 40, 56)
    resized = torch.nn.functional.interpolate(image, size=(32, 32), mode="bilinear", align_corners=False)
    want = clip_model.encode_image((resized - mc.mean) / mc.std)
    assert torch.allclose(mc.image_embedding(image), want, atol=1e-5)
    # a mask covering every patch attends exactly like the class token -> G_CLIP == the image embedding;
    # an empty mask sees only the class token; masks never influence each other
    full = torch.full((2, 1, 10, 14), 10.0)
    empty = torch.full((2, 1, 10, 14), -10.0)
    half = torch.full((2, 1, 10, 14), -10.0)
    half[..., :, :7] = 10.0
    g = mc(image, torch.cat([full, empty, half], 1))
    assert g.shape == (2, 3, 32)
    assert torch.allclose(g[:, 0], want, atol=1e-5)
    assert torch.allclose(mc(image, half)[:, 0], g[:, 2], atol=1e-5)
    assert not torch.allclose(g[:, 2], g[:, 0], atol=1e-3) and not torch.allclose(g[:, 1], g[:, 0], atol=1e-3)
    assert not any(p.requires_grad for p in mc.parameters())


def test_maskclip_rejects_towers_without_class_token():
    with pytest.raises(ValueError, match="class token"):
        MaskCLIP(torch.nn.Linear(2, 2))


def test_diffusion_taps_noise_and_frozen_weights(extractor):
    assert [(n, s) for n, s, _ in extractor.taps] == [
        ("vae_encoder.2.0", 4), ("vae_encoder.3.0", 8), ("unet.0.1", 32), ("unet.1.1", 16), ("unet.2.1", 8),
        ("vae_decoder.0.1", 8), ("vae_decoder.1.1", 4)]
    assert extractor.size_divisibility == 32 and extractor.null_condition.shape == (8, 32)
    image = torch.rand(2, 3, 64, 96)
    tokens = torch.randn(2, 8, 32, requires_grad=True)
    offset = torch.randn(2, extractor.time_embed_dim, requires_grad=True)
    feats = extractor(image, tokens, offset)
    for (name, stride, channels), f in zip(extractor.taps, feats):
        assert f.shape == (2, channels, 64 // stride, 96 // stride), name
    sum(f.square().mean() for f in feats).backward()
    assert tokens.grad.abs().sum() > 0 and offset.grad.abs().sum() > 0  # the condition is learnable ...
    assert all(p.grad is None and not p.requires_grad for p in extractor.parameters())  # ... the UNet is not
    # conditioning changes only the UNet features; Eq. 2 with the scaled-linear SD schedule at t = 0
    again = extractor(image, torch.zeros_like(tokens), None)
    assert torch.equal(again[0], feats[0]) and not torch.allclose(again[2], feats[2])
    beta0 = 0.00085  # (sqrt(0.00085) + 0 * step) ** 2
    latent = torch.randn(1, 4, 2, 3)
    noise = extractor.fixed_noise(latent.shape, latent.device, latent.dtype)
    noisy = extractor.scheduler.add_noise(latent, noise, torch.tensor([0]))
    assert torch.allclose(noisy, math.sqrt(1 - beta0) * latent + math.sqrt(beta0) * noise, atol=1e-6)
    assert torch.equal(noise, extractor.fixed_noise(latent.shape, latent.device, latent.dtype))
    with pytest.raises(ValueError, match="multiple of 32"):
        extractor(torch.rand(1, 3, 48, 64), tokens[:1])


def test_diffusion_input_resize_and_projection_back_to_the_view():
    cfg = from_dict(DiffusionConfig, {**TINY["diffusion"], "input_size": [64, 64]})
    ext = DiffusionFeatureExtractor(cfg)
    feats = ext(torch.rand(1, 3, 32, 96), torch.zeros(1, 8, 32))
    assert [f.shape[-2:] for f in feats] == [(64 // s, 64 // s) for _, s, _ in ext.taps]  # SD sees 64 x 64
    out = MultiScaleProjection(ext.taps, 16)(feats, (32, 96))
    assert {s: tuple(v.shape[-2:]) for s, v in out.items()} == {4: (8, 24), 8: (4, 12), 16: (2, 6), 32: (1, 3)}


def test_diffusion_config_errors():
    with pytest.raises(ValueError, match="preset"):
        DiffusionFeatureExtractor(DiffusionConfig(unet="sd99"))
    with pytest.raises(FileNotFoundError, match="diffusers"):
        DiffusionFeatureExtractor(DiffusionConfig(pretrained="/nonexistent/sd"))


def test_captioner_starts_from_the_unconditional_tokens():
    cap = ImplicitCaptioner(in_dim=16, latent_dim=24, num_tokens=5, token_dim=8, time_dim=12)
    null = torch.randn(5, 8)
    f3d = torch.randn(3, 16, requires_grad=True)
    tokens, time_offset = cap(f3d, null)
    assert tokens.shape == (3, 5, 8) and time_offset.shape == (3, 12)
    assert torch.equal(tokens, null.expand(3, -1, -1)) and not time_offset.any()  # tanh(alpha = 0) gates
    (tokens.sum() + time_offset.sum()).backward()
    assert cap.alpha.grad.abs().sum() > 0 and cap.alpha_time.grad.abs().sum() > 0
    with torch.no_grad():
        cap.alpha.fill_(0.5)
    tokens, _ = cap(f3d, null)
    tokens.sum().backward()
    assert f3d.grad.abs().sum() > 0  # Eq. 4: gradients reach the 3D encoder through the condition
    assert ImplicitCaptioner(16, 24, 5, 8, time_dim=0)(f3d, null)[1] is None


def test_pixel_and_mask_decoder_shapes_and_masked_attention(extractor):
    proj = MultiScaleProjection(extractor.taps, 32)
    feats = extractor(torch.rand(2, 3, 64, 96), torch.zeros(2, 8, 32))
    ms = proj(feats, (64, 96))
    assert sorted(ms) == [4, 8, 16, 32] and ms[4].shape == (2, 32, 16, 24)
    pd = PixelDecoder(proj.out_strides, 32, dim=32, mask_dim=16, num_heads=4, ffn_dim=64, num_layers=2, num_points=2)
    assert pd.transformer_strides == [32, 16, 8] and pd.fpn_strides == [4]
    mask_features, levels = pd(ms)
    assert mask_features.shape == (2, 16, 16, 24) and [lv.shape[-2:] for lv in levels] == [(2, 3), (4, 6), (8, 12)]
    dec = MaskDecoder(32, embed_dim=20, hidden_dim=32, num_queries=5, num_heads=4, ffn_dim=64, num_layers=4,
                      mask_dim=16)
    preds = dec(levels, mask_features)
    assert len(preds) == 5
    assert preds[-1].mask_logits.shape == (2, 5, 16, 24) and preds[-1].mask_embed.shape == (2, 5, 20)
    # masked cross-attention: the next layer's mask comes from this layer's mask (sigmoid < 0.5 is masked)
    _, attn_mask = dec._predict(torch.randn(2, 5, 32), mask_features, (2, 3))
    assert attn_mask.shape == (2 * 4, 5, 6) and attn_mask.dtype == torch.bool
    with pytest.raises(ValueError, match="levels"):
        dec(levels[:2], mask_features)
