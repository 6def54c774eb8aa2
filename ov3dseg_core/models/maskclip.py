"""MaskCLIP pooling (XMask3D Eq. 9-11): CLIP embeddings of predicted masks from a frozen open_clip ViT.

The image tokens [T_C; T_I] run through the frozen CLIP layers together with M copies T_M of the class token;
the attention mask (Eq. 10-11) lets image tokens attend only to image tokens, and mask token i only to the class
token and to the patches that contain at least one pixel of mask i (never to any mask token, itself included).
The updated mask tokens, through CLIP's final norm and projection, are G_CLIP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ov3dseg_core import compat

compat.apply()

import open_clip  # noqa: E402
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # noqa: E402

from ov3dseg_core.models.text.open_clip_encoder import register_open_clip_configs, resolve_pretrained  # noqa: E402


@dataclass
class ClipConfig:
    """The frozen CLIP image encoder of MaskCLIP (and of the 2D-condition captioner). model_name None shares the
    image tower of the open_clip text encoder's model (one CLIP in memory); otherwise an open_clip model name and
    weights (a local file or a cached open_clip tag; None = random)."""

    model_name: str | None = None
    pretrained: str | None = None


def maskclip_attention_mask(patch_hit: torch.Tensor) -> torch.Tensor:
    """Eq. 10-11 for token order [class, N patches, M mask tokens].

    patch_hit: (B, M, N) bool, True where mask i has at least one pixel in patch j. Returns (B, L, L) bool with
    L = 1 + N + M, True = may NOT attend (row = query, column = key).
    """
    b, m, n = patch_hit.shape
    length = 1 + n + m
    mask = torch.zeros(b, length, length, dtype=torch.bool, device=patch_hit.device)
    mask[:, :, 1 + n:] = True  # nobody attends to the mask tokens (T blocks of Eq. 10)
    mask[:, 1 + n:, 1:1 + n] = ~patch_hit  # P of Eq. 11
    return mask


class MaskCLIP(nn.Module):
    """Frozen open_clip vision tower used for mask pooling and for the image embedding V(x).

    visual: an open_clip ``VisionTransformer`` (class token, no attentional pooler); mean/std: its input
    normalisation (OpenAI CLIP's by default); logit_scale: CLIP's 1 / tau for the mask classifier (Eq. 17).
    """

    def __init__(self, visual: nn.Module, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, logit_scale: float = 100.0):
        super().__init__()
        if not hasattr(visual, "class_embedding") or getattr(visual, "attn_pool", None) is not None:
            raise ValueError("MaskCLIP needs an open_clip VisionTransformer with a class token and no attention pool")
        self.visual = visual
        self.visual.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.logit_scale = float(logit_scale)
        self.image_size = tuple(visual.image_size) if isinstance(visual.image_size, (tuple, list)) else (
            visual.image_size, visual.image_size)
        self.patch_size = tuple(visual.conv1.kernel_size)
        self.num_heads = visual.transformer.resblocks[0].attn.num_heads
        self.embed_dim = int(visual.proj.shape[1]) if visual.proj is not None else int(visual.class_embedding.numel())

    @classmethod
    def from_model(cls, model: nn.Module) -> "MaskCLIP":
        """The vision tower of an open_clip CLIP model, with its preprocessing statistics and logit scale (the
        module is shared, not copied)."""
        pp = open_clip.get_model_preprocess_cfg(model)
        scale = float(model.logit_scale.detach().exp().clamp(max=100.0)) if hasattr(model, "logit_scale") else 100.0
        return cls(model.visual, pp.get("mean", OPENAI_DATASET_MEAN), pp.get("std", OPENAI_DATASET_STD), scale)

    @classmethod
    def from_open_clip(cls, model_name: str, pretrained: str | None = None) -> "MaskCLIP":
        """Build from an open_clip model name and optional weights (a local file or a tag already in the cache,
        never downloaded); keeps the vision tower."""
        register_open_clip_configs()
        weights = None if pretrained is None else resolve_pretrained(model_name, str(pretrained))
        return cls.from_model(open_clip.create_model(model_name, pretrained=weights))

    def train(self, mode: bool = True) -> "MaskCLIP":
        """The CLIP tower stays in eval mode (frozen)."""
        super().train(mode)
        self.visual.eval()
        return self

    def _tokens(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> CLIP input tokens [class; patches] after ln_pre, (B, 1 + N, width)."""
        x = F.interpolate(image, size=self.image_size, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        return self.visual._embeds(x.to(self.visual.conv1.weight.dtype))

    def _run(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        transformer = self.visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        for block in transformer.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x if batch_first else x.transpose(0, 1)

    def _head(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.visual.ln_post(tokens)
        return out @ self.visual.proj if self.visual.proj is not None else out

    @torch.no_grad()
    def image_embedding(self, image: torch.Tensor) -> torch.Tensor:
        """V(x): the CLIP image embedding (B, embed_dim) of images (B, 3, H, W), RGB in [0, 1]."""
        return self._head(self._run(self._tokens(image), None)[:, 0])

    @torch.no_grad()
    def forward(self, image: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """G_CLIP (B, M, embed_dim) for images (B, 3, H, W) in [0, 1] and mask logits (B, M, h, w) (any size)."""
        tokens = self._tokens(image)
        b, m = mask_logits.shape[:2]
        masks = F.interpolate(mask_logits.float(), size=self.image_size, mode="bilinear", align_corners=False)
        patch_hit = F.max_pool2d(masks.sigmoid(), kernel_size=self.patch_size, stride=self.patch_size) >= 0.5
        blocked = maskclip_attention_mask(patch_hit.flatten(2))
        additive = torch.zeros(blocked.shape, dtype=tokens.dtype, device=tokens.device)
        additive.masked_fill_(blocked, float("-inf"))
        additive = additive.repeat_interleave(self.num_heads, dim=0)
        x = torch.cat([tokens, tokens[:, :1].expand(b, m, -1)], dim=1)
        x = self._run(x, additive)
        return self._head(x[:, tokens.shape[1]:])
