"""The frozen Stable Diffusion feature extractor of XMask3D's 2D branch (ODISE, Eq. 2-3).

The VAE encodes the image into a latent, the latent is noised at a fixed timestep t (Eq. 2), and the frozen
denoising UNet runs once with condition tokens from the implicit captioner (Eq. 3-4). Forward pre-hooks capture
the inputs of chosen ResNet blocks (UNet decoder blocks, VAE encoder and decoder blocks, as ODISE does) as
multi-scale features; ``MultiScaleProjection`` (trainable) projects them and sums them per output stride.

Weights: ``pretrained`` names a local diffusers folder (e.g. a Stable Diffusion 1.5 snapshot with ``unet/``,
``vae/``, optionally ``text_encoder/`` + ``tokenizer/`` for the empty-prompt embedding) or one original-layout
Stable Diffusion 1.x file (``.safetensors`` / ``.ckpt``, e.g. ``v1-5-pruned-emaonly.safetensors``: keys
``model.diffusion_model.*`` and ``first_stage_model.*``), converted offline with diffusers' own key mapping into
the architectures named by ``unet`` / ``vae``. Without it the UNet and VAE are built with random weights from a
preset name ("sd15") or a diffusers config dict.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ov3dseg_core import compat

compat.apply()

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402

SD15_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "act_fn": "silu",
    "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1,
    "norm_eps": 1e-5, "center_input_sample": False,
}
"""Stable Diffusion 1.x UNet (runwayml/stable-diffusion-v1-5 ``unet/config.json``), 859.5M parameters."""

SD15_VAE: dict[str, Any] = {
    "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215,
}
"""Stable Diffusion 1.x VAE (``vae/config.json``), 83.7M parameters."""

PRESETS = {"sd15": (SD15_UNET, SD15_VAE)}


@dataclass
class DiffusionConfig:
    """pretrained: local diffusers folder or original-layout single file (None = random weights); ``unet`` /
    ``vae``: the architectures, a preset name or a diffusers config dict (ignored for a diffusers folder, which
    carries its own configs); timestep: fixed t of Eq. 2 (ODISE: 0); noise_seed: seed of the fixed noise;
    num_tokens: condition tokens T (77 for SD's CLIP text encoder); unet_taps / vae_encoder_taps /
    vae_decoder_taps: [block, resnet] pairs whose ResNet input is a feature map (ODISE's defaults for SD 1.x);
    projection_dim / min_stride / max_stride: the trainable projection of the taps (strides are clamped);
    input_size: (H, W) the image is resized to before the VAE (ODISE / XMask3D: 512 x 512, SD's training size;
    None = native size); gradient_checkpointing: UNet activation checkpointing (saves GPU memory)."""

    pretrained: str | None = None
    unet: Any = "sd15"
    vae: Any = "sd15"
    timestep: int = 0
    noise_seed: int = 42
    num_tokens: int = 77
    unet_taps: list = field(default_factory=lambda: [[0, 2], [1, 2], [2, 2], [3, 2]])
    vae_encoder_taps: list = field(default_factory=lambda: [[2, 1], [3, 1]])
    vae_decoder_taps: list = field(default_factory=lambda: [[0, 2], [1, 2]])
    projection_dim: int = 512
    min_stride: int = 4
    max_stride: int = 32
    input_size: list | None = None
    gradient_checkpointing: bool = False


def _arch(spec: Any, index: int, what: str) -> dict[str, Any]:
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown {what} preset {spec!r}; known: {sorted(PRESETS)}")
        return copy.deepcopy(PRESETS[spec][index])
    if isinstance(spec, dict):
        return dict(spec)
    raise ValueError(f"{what} must be a preset name or a diffusers config dict, got {type(spec).__name__}")


def load_single_file(path: Path, unet_config: dict[str, Any], vae_config: dict[str, Any],
                     ) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """UNet and VAE from one original-layout Stable Diffusion file (``model.diffusion_model.*``,
    ``first_stage_model.*``; safetensors, or a pickle read with ``weights_only``), built from the given diffusers
    configs and filled through ``diffusers.loaders.single_file_utils`` (no hub access). ValueError naming the
    keys when the file does not fit the architectures."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from ov3dseg_core.models.backbones.checkpoint import read_state_dict

    state = read_state_dict(path)
    if not any(k.startswith("model.diffusion_model.") for k in state) or not any(
            k.startswith("first_stage_model.") for k in state):
        raise ValueError(f"{path} is not an original-layout Stable Diffusion checkpoint (no model.diffusion_model.* "
                         "UNet or first_stage_model.* VAE keys)")
    unet = UNet2DConditionModel.from_config(unet_config)
    vae = AutoencoderKL.from_config(vae_config)
    for name, model, converted in (
            ("UNet", unet, convert_ldm_unet_checkpoint(state, unet.config)),
            ("VAE", vae, convert_ldm_vae_checkpoint({k: v for k, v in state.items()
                                                    if k.startswith("first_stage_model.")}, vae.config))):
        target = model.state_dict()
        missing = sorted(set(target) - set(converted))
        unexpected = sorted(set(converted) - set(target))
        mismatched = [k for k in set(target) & set(converted) if target[k].shape != converted[k].shape]
        if missing or unexpected or mismatched:
            raise ValueError(f"the {name} of {path} does not fit the configured architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, shape mismatches {mismatched[:5]} (of {len(missing)}, "
                             f"{len(unexpected)}, {len(mismatched)})")
        model.load_state_dict(converted)
    return unet, vae


class DiffusionFeatureExtractor(nn.Module):
    """Frozen VAE + UNet returning the tapped feature maps of an image under given condition tokens.

    Attributes: ``taps`` (name, stride, channels) in output order, ``cross_attention_dim``, ``time_embed_dim``,
    ``num_tokens``, ``size_divisibility`` (image sides must be multiples of it), buffer ``null_condition``
    (num_tokens, cross_attention_dim): the text encoder's embedding of "" (zeros without a text encoder).
    """

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.pretrained is not None and Path(cfg.pretrained).expanduser().is_file():
            self.unet, self.vae = load_single_file(Path(cfg.pretrained).expanduser(), _arch(cfg.unet, 0, "unet"),
                                                   _arch(cfg.vae, 1, "vae"))
        elif cfg.pretrained is not None:
            root = Path(cfg.pretrained).expanduser()
            if not (root / "unet").is_dir() or not (root / "vae").is_dir():
                raise FileNotFoundError(f"{root} is neither a diffusers Stable Diffusion folder (needs unet/ and vae/) "
                                        "nor a single-file checkpoint")
            self.unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet")
            self.vae = AutoencoderKL.from_pretrained(root, subfolder="vae")
        else:
            self.unet = UNet2DConditionModel.from_config(_arch(cfg.unet, 0, "unet"))
            self.vae = AutoencoderKL.from_config(_arch(cfg.vae, 1, "vae"))
        self.unet.requires_grad_(False)
        self.vae.requires_grad_(False)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear")
        if not 0 <= cfg.timestep < self.scheduler.config.num_train_timesteps:
            raise ValueError(f"timestep must be in [0, 1000), got {cfg.timestep}")
        self.cross_attention_dim = int(self.unet.config.cross_attention_dim)
        self.time_embed_dim = int(self.unet.time_embedding.linear_2.out_features)
        self.num_tokens = cfg.num_tokens
        vae_stride = 2 ** (len(self.vae.config.block_out_channels) - 1)
        n_unet = len(self.unet.config.block_out_channels)
        self.size_divisibility = vae_stride * 2 ** (n_unet - 1)
        self.taps: list[tuple[str, int, int]] = []
        self._captured: dict[str, torch.Tensor] = {}
        self._time_offset: torch.Tensor | None = None
        groups = (("vae_encoder", self.vae.encoder.down_blocks, cfg.vae_encoder_taps, lambda i: 2 ** i),
                  ("unet", self.unet.up_blocks, cfg.unet_taps, lambda i: vae_stride * 2 ** (n_unet - 1 - i)),
                  ("vae_decoder", self.vae.decoder.up_blocks, cfg.vae_decoder_taps, lambda i: vae_stride // 2 ** i))
        for prefix, blocks, taps, stride_of in groups:
            for block, resnet in taps:
                if not 0 <= block < len(blocks) or not -len(blocks[block].resnets) <= resnet < len(
                        blocks[block].resnets):
                    raise ValueError(f"{prefix} tap [{block}, {resnet}] does not exist")
                module = blocks[block].resnets[resnet]
                name = f"{prefix}.{block}.{resnet % len(blocks[block].resnets)}"
                module.register_forward_pre_hook(self._capture(name))
                self.taps.append((name, stride_of(block), int(module.in_channels)))
        if not self.taps:
            raise ValueError("at least one feature tap is needed")
        self.unet.time_embedding.register_forward_hook(self._add_time_offset)
        self.register_buffer("null_condition", self._empty_prompt_embedding(cfg), persistent=True)
        self._noise: dict[tuple, torch.Tensor] = {}

    def _empty_prompt_embedding(self, cfg: DiffusionConfig) -> torch.Tensor:
        root = None if cfg.pretrained is None else Path(cfg.pretrained).expanduser()
        if root is None or not (root / "text_encoder").is_dir():
            return torch.zeros(cfg.num_tokens, self.cross_attention_dim)
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
        encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder")
        ids = tokenizer([""], padding="max_length", max_length=cfg.num_tokens, return_tensors="pt").input_ids
        with torch.no_grad():
            return encoder(ids)[0][0].float()

    def _capture(self, name: str):
        def hook(_module, args):
            self._captured[name] = args[0]
        return hook

    def _add_time_offset(self, _module, _args, output):
        return output if self._time_offset is None else output + self._time_offset.to(output.dtype)

    def train(self, mode: bool = True) -> "DiffusionFeatureExtractor":
        """The UNet and VAE stay in eval mode (frozen)."""
        super().train(mode)
        self.unet.eval()
        self.vae.eval()
        return self

    def fixed_noise(self, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The deterministic epsilon of Eq. 2 for a latent shape (1, C, h, w), drawn once per shape."""
        key = (tuple(shape), str(device), dtype)
        if key not in self._noise:
            gen = torch.Generator().manual_seed(self.cfg.noise_seed)
            self._noise[key] = torch.randn(tuple(shape), generator=gen).to(device=device, dtype=dtype)
        return self._noise[key]

    def forward(self, image: torch.Tensor, tokens: torch.Tensor,
                time_offset: torch.Tensor | None = None) -> list[torch.Tensor]:
        """image: (B, 3, H, W) RGB in [0, 1]; tokens (B, T, C) condition tokens; time_offset (B, time_embed_dim)
        added to the timestep embedding, or None. The image is resized to ``input_size`` when set; the size the
        VAE sees must be a multiple of ``size_divisibility``. Returns the tapped maps in ``taps`` order, each
        (B, channels, h / stride, w / stride) for that size. Gradients reach the tokens and time offset, never the
        frozen weights."""
        if self.cfg.input_size is not None:
            image = F.interpolate(image, size=tuple(self.cfg.input_size), mode="bicubic", align_corners=False)
            image = image.clamp(0.0, 1.0)
        b, _, h, w = image.shape
        if h % self.size_divisibility or w % self.size_divisibility:
            raise ValueError(f"image size {h}x{w} is not a multiple of {self.size_divisibility}")
        self._captured.clear()
        with torch.no_grad():
            latent = self.vae.encode(image * 2.0 - 1.0).latent_dist.mean * self.vae.config.scaling_factor
            t = torch.full((b,), self.cfg.timestep, dtype=torch.long, device=image.device)
            noise = self.fixed_noise((1, *latent.shape[1:]), latent.device, latent.dtype).expand_as(latent)
            noisy = self.scheduler.add_noise(latent, noise, t)
            if self.cfg.vae_decoder_taps:
                self.vae.decode(latent / self.vae.config.scaling_factor)
        self._time_offset = time_offset
        try:
            self.unet(noisy, t, encoder_hidden_states=tokens.to(noisy.dtype))
        finally:
            self._time_offset = None
        features = [self._captured[name] for name, _, _ in self.taps]
        self._captured.clear()
        return features


class BottleneckBlock(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1 convolutions with GroupNorm) with a projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = max(out_channels // 4, 1)

        def conv_gn(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                                 nn.GroupNorm(min(32, cout), cout))

        self.conv1, self.conv2, self.conv3 = conv_gn(in_channels, mid, 1), conv_gn(mid, mid, 3), conv_gn(
            mid, out_channels, 1)
        self.shortcut = conv_gn(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        return F.relu(self.conv3(y) + self.shortcut(x))


class MultiScaleProjection(nn.Module):
    """ODISE's projection of the tapped features: a bottleneck block per tap to ``dim`` channels, resized to its
    stride clamped to [min_stride, max_stride] and summed per stride.

    forward(features, image_size (H, W)) -> {stride: (B, dim, H / stride, W / stride)}, strides ascending.
    """

    def __init__(self, taps: list[tuple[str, int, int]], dim: int, min_stride: int = 4, max_stride: int = 32):
        super().__init__()
        self.strides = [min(max(stride, min_stride), max_stride) for _, stride, _ in taps]
        self.blocks = nn.ModuleList(BottleneckBlock(channels, dim) for _, _, channels in taps)
        self.out_strides = sorted(set(self.strides))

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int]) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        for feature, stride, block in zip(features, self.strides, self.blocks):
            size = (image_size[0] // stride, image_size[1] // stride)
            if feature.shape[-2:] != size:
                feature = F.interpolate(feature, size=size, mode="nearest")
            y = block(feature.float())
            out[stride] = y if stride not in out else out[stride] + y
        return {s: out[s] for s in self.out_strides}
