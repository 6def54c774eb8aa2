"""XMask3D (Wang et al., NeurIPS 2024): cross-modal mask reasoning for open-vocabulary 3D semantic segmentation.

    3D branch      sparse U-Net (REGISTRY "backbone") -> per-point F3d (linear to the text space D) and the global
                   feature f3d (bottleneck mean)
    2D branch      Implicit 3D Captioner(f3d) -> condition tokens -> frozen Stable Diffusion UNet features of the
                   noised image latent -> pixel decoder -> masked transformer decoder: M masks M2d, embeddings G2d
    2D -> 3D       masks lifted to the view's points (pixel correspondences), F2d = M3d G2d, G3d (Eq. 5)
    fusion         F_fuse = MLP(cat(F3d, F2d)) where a point has a mask, F3d elsewhere (Eq. 7)
    heads          cosine text classifier with learnable temperature (Eq. 1), binary base/novel head (Eq. 13)
    regularisers   L_mask against MaskCLIP embeddings G_CLIP (Eq. 6, 9-11), L_view against caption embeddings
                   (Eq. 12); total loss Eq. 8

Entry points: ``XMask3D.forward(ViewBatch)`` (training outputs), ``XMask3D.loss(batch, outputs, progress)``,
``XMask3D.training_losses(batch, step)`` (the trainer's interface, see ov3dseg_core/training/xmask3d.py) and
``XMask3D.predict(frame or scene, vocabulary, mode)``. Built with ``REGISTRY.build("model", {"type": "XMask3D",
...})`` or ``build_xmask3d(config)`` from a YAML config (see ov3dseg_core/configs/xmask3d_*.yaml).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import nn

from ov3dseg_core.config import from_dict, load_yaml
from ov3dseg_core.data.frames import RGBDFrame, Scene
from ov3dseg_core.eval.matching import pack_keys, voxel_indices
from ov3dseg_core.eval.splits import load_split
from ov3dseg_core.geometry.camera import backproject_depth
from ov3dseg_core.geometry.transforms import transform_points
from ov3dseg_core.models import backbones, text  # noqa: F401  (registers "backbone" and "text_encoder")
from ov3dseg_core.models.captioner import CaptionerConfig, ImplicitCaptioner
from ov3dseg_core.models.diffusion_features import DiffusionConfig, DiffusionFeatureExtractor, MultiScaleProjection
from ov3dseg_core.models.fusion import FusionBlock
from ov3dseg_core.models.heads import BinaryHead, TextClassifier, calibrate, geometric_ensemble
from ov3dseg_core.models.lifting import (downsample_image, downsample_pixel_index, exclusive_masks, gather_pixels,
                                         mask_pool, point_pixel_index, pseudo_mask_features)
from ov3dseg_core.models.losses import (LossConfig, MaskSetCriterion, binary_loss, mask_alignment_loss,
                                        segmentation_ce, total_loss, view_alignment_loss)
from ov3dseg_core.models.mask_decoder import MaskDecoder, MaskDecoderConfig, MaskPrediction
from ov3dseg_core.models.maskclip import ClipConfig, MaskCLIP
from ov3dseg_core.models.pixel_decoder import PixelDecoder, PixelDecoderConfig
from ov3dseg_core.registry import REGISTRY

MODES = ("3d", "2d", "fused", "ensemble")
TEXT_INIT_SEED = 0
"""Seed of a text encoder built without pretrained weights (the tiny config): every build, and so every checkpoint
of such a model, shares one text space (the text tower is not in the model's state dict)."""


@dataclass
class InferenceConfig:
    """mode: default of ``predict``; lambda_base / lambda_novel: Eq. 16 weights for base / other classes (the
    official ScanNet values); calibrate: apply Eq. 13 with the binary head; hard_calibration: threshold s_b at
    0.5 (the official inference) instead of the soft mix; mask_threshold: mask probability for M3d;
    depth_abs_tol / depth_rel_tol: visibility test of scene points in a frame (metres / fraction of depth)."""

    mode: str = "ensemble"
    lambda_base: float = 0.65
    lambda_novel: float = 0.35
    calibrate: bool = True
    hard_calibration: bool = False
    mask_threshold: float = 0.5
    depth_abs_tol: float = 0.05
    depth_rel_tol: float = 0.02


@dataclass
class XMask3DConfig:
    """split: a base/novel split name (ov3dseg_core/splits) giving base_classes / novel_classes when those are
    empty; feature_dim: text-embedding width D (= the text encoder's and the CLIP embedding's); voxel_size:
    metres; in_channels: point features (RGB in [-1, 1]); backbone / binary_head: REGISTRY "backbone" configs
    (in_channels is added; binary_head None disables the head); text_encoder: a REGISTRY "text_encoder" config;
    prompt_template: how class names become prompts; fusion_layers: Linear layers of the fusion MLP."""

    split: str | None = None
    base_classes: list = field(default_factory=list)
    novel_classes: list = field(default_factory=list)
    feature_dim: int = 768
    voxel_size: float = 0.02
    in_channels: int = 3
    backbone: dict = field(default_factory=lambda: {"type": "SpUNet34C", "out_channels": 256})
    binary_head: dict | None = field(default_factory=lambda: {"type": "SpUNet18A", "out_channels": 256})
    text_encoder: dict = field(default_factory=lambda: {"type": "open_clip", "model_name": "ViT-L-14"})
    prompt_template: str = "a {} in a scene"
    clip: ClipConfig = field(default_factory=ClipConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    fusion_layers: int = 1
    loss: LossConfig = field(default_factory=LossConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass
class ViewBatch:
    """B views with their partial point clouds.

    image (B, 3, H, W) float32 RGB in [0, 1]; voxels (the backbone input): grid_coord (V, 3) int64 >= 0, feat (V, C)
    float32, offset (B,) int64 cumulative voxel counts; points: point_voxel (P,) int64 voxel of each point,
    point_offset (B,) int64 cumulative point counts, pixel_index (P,) int64 = v * W + u of the point in its view or
    -1; training targets (optional): labels (P,) int64 base-class index or -1, is_novel (P,) int64 1 / 0 / -1
    (ignored), label_image (B, H, W) int64 base-class index or -1, caption (B, D) caption text embeddings.
    """

    image: torch.Tensor
    grid_coord: torch.Tensor
    feat: torch.Tensor
    offset: torch.Tensor
    point_voxel: torch.Tensor
    point_offset: torch.Tensor
    pixel_index: torch.Tensor
    labels: torch.Tensor | None = None
    is_novel: torch.Tensor | None = None
    label_image: torch.Tensor | None = None
    caption: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "ViewBatch":
        return ViewBatch(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})

    def point_slices(self) -> list[slice]:
        ends = self.point_offset.tolist()
        return [slice(a, b) for a, b in zip([0] + ends[:-1], ends)]


def make_view_batch(images: Sequence[np.ndarray], points: Sequence[np.ndarray], colors: Sequence[np.ndarray],
                    pixel_index: Sequence[np.ndarray], voxel_size: float, labels: Sequence[np.ndarray] | None = None,
                    is_novel: Sequence[np.ndarray] | None = None, label_images: Sequence[np.ndarray] | None = None,
                    captions: torch.Tensor | None = None) -> ViewBatch:
    """Collate views: images (H, W, 3) uint8 (one size), points (P_b, 3) metres (any frame), colors (P_b, 3) uint8,
    pixel_index (P_b,) int64 (-1 = none), optional per-point labels / is_novel (P_b,) and label images (H, W), in
    the conventions of ``ViewBatch``. Each view's points are voxelised (voxel features = mean colour in [-1, 1])."""
    if not len(images) == len(points) == len(colors) == len(pixel_index):
        raise ValueError("images, points, colors and pixel_index need one entry per view")
    shapes = {im.shape for im in images}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"all images must be (H, W, 3) of one size, got {sorted(shapes)}")
    coords, feats, point_voxel, offset, point_offset = [], [], [], [], []
    n_vox = n_pts = 0
    for pts, col in zip(points, colors):
        if len(pts) == 0 or len(col) != len(pts):
            raise ValueError("every view needs points with one colour each")
        idx = voxel_indices(pts, voxel_size)
        idx -= idx.min(axis=0)
        _, first, inverse = np.unique(pack_keys(idx), return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        counts = np.bincount(inverse)
        col = np.asarray(col, dtype=np.float64)
        mean = np.stack([np.bincount(inverse, weights=col[:, c]) for c in range(3)], axis=1) / counts[:, None]
        coords.append(idx[first])
        feats.append((mean / 127.5 - 1.0).astype(np.float32))
        point_voxel.append(inverse + n_vox)
        n_vox += len(first)
        n_pts += len(pts)
        offset.append(n_vox)
        point_offset.append(n_pts)

    def cat(arrays, dtype=torch.int64):
        return torch.as_tensor(np.concatenate([np.asarray(a) for a in arrays]), dtype=dtype)

    image = torch.as_tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    return ViewBatch(
        image=image, grid_coord=cat(coords), feat=cat(feats, torch.float32), offset=torch.tensor(offset),
        point_voxel=cat(point_voxel), point_offset=torch.tensor(point_offset), pixel_index=cat(pixel_index),
        labels=None if labels is None else cat(labels), is_novel=None if is_novel is None else cat(is_novel),
        label_image=None if label_images is None else torch.as_tensor(np.stack(label_images), dtype=torch.int64),
        caption=captions)


@dataclass
class XMask3DOutput:
    """Forward outputs for a ViewBatch with P points, Q queries, D = feature_dim.

    f3d / f2d / f_fuse: (P, D); has_2d: (P,) bool; m3d: per view (P_b, Q) bool lifted exclusive masks (rows of
    points without correspondence are False); mask_scores: (B, Q); predictions: decoder outputs per layer (last =
    final); novel_logits: (P,) binary-head logits or None; image_size: (H, W) of the unpadded images."""

    f3d: torch.Tensor
    f2d: torch.Tensor
    has_2d: torch.Tensor
    f_fuse: torch.Tensor
    m3d: list[torch.Tensor]
    mask_scores: torch.Tensor
    predictions: list[MaskPrediction]
    novel_logits: torch.Tensor | None
    image_size: tuple[int, int]


@dataclass
class Prediction:
    """Per-point result of ``predict``: labels (N,) int64 indices into the vocabulary, scores (N,) float32 class
    probabilities, features (N, D) float32 (the mode's features, L2-normalised); points (N, 3) float32 metres in the
    world frame (camera frame for a frame without pose) when the input was a frame."""

    labels: np.ndarray
    scores: np.ndarray
    features: np.ndarray
    points: np.ndarray | None = None


class XMask3D(nn.Module):
    """The XMask3D model (see the module docstring). Frozen: SD UNet + VAE, CLIP image encoder, text encoder."""

    def __init__(self, cfg: XMask3DConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.captioner.condition not in ("3d", "2d"):
            raise ValueError(f"captioner.condition must be '3d' or '2d', got {cfg.captioner.condition!r}")
        if cfg.inference.mode not in MODES:
            raise ValueError(f"inference.mode must be one of {MODES}, got {cfg.inference.mode!r}")
        base, novel = list(cfg.base_classes), list(cfg.novel_classes)
        if not base and cfg.split is not None:
            split = load_split(cfg.split)
            base, novel = list(split.base), list(split.novel)
        if not base:
            raise ValueError("XMask3D needs base classes: set split or base_classes")
        self.base_classes, self.novel_classes = base, novel
        d = cfg.feature_dim

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TEXT_INIT_SEED)
            self.text_encoder = text.build_text_encoder(dict(cfg.text_encoder))
        if self.text_encoder.dim != d:
            raise ValueError(f"text encoder dim {self.text_encoder.dim} != feature_dim {d}")
        self.backbone = REGISTRY.build("backbone", dict(cfg.backbone), in_channels=cfg.in_channels)
        self.proj_3d = nn.Linear(self.backbone.out_channels, d)
        self.binary_head = None
        if cfg.binary_head is not None:
            self.binary_head = BinaryHead({**cfg.binary_head, "in_channels": cfg.in_channels})

        if cfg.clip.model_name is None:
            self.maskclip = MaskCLIP.from_model(open_clip_model(self.text_encoder))
        else:
            self.maskclip = MaskCLIP.from_open_clip(cfg.clip.model_name, cfg.clip.pretrained)
        if self.maskclip.embed_dim != d:
            raise ValueError(f"CLIP embedding dim {self.maskclip.embed_dim} != feature_dim {d}")
        self.diffusion = DiffusionFeatureExtractor(cfg.diffusion)
        cond_dim = self.backbone.bottleneck_channels if cfg.captioner.condition == "3d" else d
        self.captioner = ImplicitCaptioner(cond_dim, cfg.captioner.latent_dim, self.diffusion.num_tokens,
                                           self.diffusion.cross_attention_dim,
                                           self.diffusion.time_embed_dim if cfg.captioner.time_condition else 0)
        pd, md = cfg.pixel_decoder, cfg.mask_decoder
        self.projection = MultiScaleProjection(self.diffusion.taps, cfg.diffusion.projection_dim,
                                               cfg.diffusion.min_stride, cfg.diffusion.max_stride)
        self.pixel_decoder = PixelDecoder(self.projection.out_strides, cfg.diffusion.projection_dim, pd.dim,
                                          pd.mask_dim, pd.num_heads, pd.ffn_dim, pd.num_layers, pd.num_points)
        self.mask_decoder = MaskDecoder(pd.dim, d, md.hidden_dim, md.num_queries, md.num_heads, md.ffn_dim,
                                        md.num_layers, pd.mask_dim, len(self.pixel_decoder.transformer_strides))
        self.fusion = FusionBlock(d, cfg.fusion_layers)
        self.classifier = TextClassifier()
        self.null_embed = nn.Parameter(self.text_encoder.encode([""]).float().reshape(1, d).clone())
        self.criterion = MaskSetCriterion(cfg.loss)
        self.steps_per_epoch = 1  # set by the training set-up: training_losses counts epochs as step / this

    # ------------------------------------------------------------------------------------------------ checkpoints
    def pretrained_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the frozen modules whose weights the config loads from local pretrained files
        (the SD UNet + VAE from ``diffusion.pretrained``, the CLIP image tower from ``clip.pretrained`` or, when it
        shares the text encoder's model, ``text_encoder.pretrained``); random-weight modules are not listed."""
        clip_weights = (self.cfg.text_encoder.get("pretrained") if self.cfg.clip.model_name is None
                        else self.cfg.clip.pretrained)
        return ((("diffusion.unet.", "diffusion.vae.", "diffusion.null_condition") if self.cfg.diffusion.pretrained
                 else ()) + (("maskclip.",) if clip_weights else ()))

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the state dict without the ``pretrained_prefixes`` (reloaded from the
        pretrained files the checkpoint's config names: about 1.3 of the real size's 1.46 G parameters)."""
        skip = self.pretrained_prefixes()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)} if skip else self.state_dict()

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a ``checkpoint_state_dict`` (or a full state dict); RuntimeError naming keys that are missing
        outside the pretrained modules, or unexpected."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(self.pretrained_prefixes())]
        if missing or unexpected:
            raise RuntimeError(f"XMask3D checkpoint does not fit the model: missing {missing[:5]} ({len(missing)}), "
                               f"unexpected {unexpected[:5]} ({len(unexpected)})")

    # ----------------------------------------------------------------------------------------------- text
    def embed_classes(self, names: Sequence[str]) -> torch.Tensor:
        """Text embeddings (L, D) of class names through the prompt template, on the model's device."""
        prompts = text.apply_template(list(names), self.cfg.prompt_template)
        return self.text_encoder.encode(prompts).float().to(self.null_embed.device)

    def embed_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """Text embeddings (B, D) of view captions (the L_view target, Eq. 12)."""
        return self.text_encoder.encode(list(captions)).float().to(self.null_embed.device)

    def param_groups(self, lr_3d: float = 1e-3, lr_other: float = 1e-4) -> list[dict[str, Any]]:
        """AdamW parameter groups of the official training: the 3D networks at lr_3d, the rest at lr_other."""
        three_d = [p for m in (self.backbone, self.binary_head) if m is not None for p in m.parameters()]
        ids = {id(p) for p in three_d}
        other = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": three_d, "lr": lr_3d}, {"params": other, "lr": lr_other}]

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (frozen ones included), their total and the trainable total."""
        def count(*modules) -> int:
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        counts = {
            "unet": count(self.diffusion.unet), "vae": count(self.diffusion.vae),
            "clip_visual": count(self.maskclip), "text_encoder": text_parameter_count(self.text_encoder),
            "backbone_3d": count(self.backbone), "binary_head": count(self.binary_head),
            "captioner": count(self.captioner), "feature_projection": count(self.projection),
            "pixel_decoder": count(self.pixel_decoder), "mask_decoder": count(self.mask_decoder),
            "fusion": count(self.fusion), "heads": count(self.proj_3d, self.classifier) + self.null_embed.numel(),
        }
        counts["total"] = sum(counts.values())
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, batch: ViewBatch, class_text: torch.Tensor | None = None) -> XMask3DOutput:
        """Both branches, the lifting and the fusion for a batch. class_text (L, D): the classes that score the
        masks for the exclusive assignment of points (default: the base classes)."""
        f3d, f_global = self.encode_3d(batch)
        novel_logits = None
        if self.binary_head is not None:
            novel_logits = self.binary_head(self._voxels(batch))[batch.point_voxel]

        image = batch.image
        h, w = image.shape[-2:]
        prefix = f_global if self.cfg.captioner.condition == "3d" else self.maskclip.image_embedding(image)
        tokens, time_offset = self.captioner(prefix, self.diffusion.null_condition)
        ph, pw = self._padded((h, w))
        padded = F.pad(image, (0, pw - w, 0, ph - h))
        features = self.diffusion(padded, tokens, time_offset)
        mask_features, levels = self.pixel_decoder(self.projection(features, tuple(padded.shape[-2:])))
        predictions = self.mask_decoder(levels, mask_features)
        final = predictions[-1]

        if class_text is None:
            class_text = self.embed_classes(self.base_classes)
        class_probs = self.classifier(final.mask_embed, torch.cat([class_text, self.null_embed])).softmax(-1)
        mask_scores = class_probs.max(-1).values.detach()
        mask_probs = self.full_resolution(final.mask_logits.detach(), padded.shape[-2:], (h, w)).sigmoid()

        f2d = torch.zeros_like(f3d)
        has_2d = torch.zeros(f3d.shape[0], dtype=torch.bool, device=f3d.device)
        m3d = []
        for b, rows in enumerate(batch.point_slices()):
            pix = batch.pixel_index[rows]
            seen = pix >= 0
            m = torch.zeros(len(pix), mask_probs.shape[1], dtype=torch.bool, device=f3d.device)
            m[seen] = exclusive_masks(gather_pixels(mask_probs[b], pix[seen]), mask_scores[b],
                                      self.cfg.inference.mask_threshold)
            f, has = pseudo_mask_features(m, final.mask_embed[b])
            f2d[rows], has_2d[rows] = f, has
            m3d.append(m)
        f_fuse = self.fusion(f3d, f2d, has_2d)
        return XMask3DOutput(f3d, f2d, has_2d, f_fuse, m3d, mask_scores, predictions, novel_logits, (h, w))

    @staticmethod
    def _voxels(batch: ViewBatch) -> dict[str, torch.Tensor]:
        return {"grid_coord": batch.grid_coord, "feat": batch.feat, "offset": batch.offset}

    def encode_3d(self, batch: ViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The 3D branch: per-point F3d (P, D) and the per-view global feature f3d (B, C_g) of the bottleneck."""
        vox_feat, f_global = self.backbone(self._voxels(batch), return_global=True)
        return self.proj_3d(vox_feat)[batch.point_voxel], f_global

    @torch.no_grad()
    def point_features_3d(self, points: np.ndarray, colors: np.ndarray) -> torch.Tensor:
        """F3d (P, D) of one point cloud (points (P, 3) metres, colours (P, 3) uint8) from the 3D branch alone
        (what Eq. 7 gives points without a 2D correspondence)."""
        batch = make_view_batch([np.zeros((1, 1, 3), np.uint8)], [points], [colors], [np.full(len(points), -1)],
                                self.cfg.voxel_size)  # the image is unused
        return self.encode_3d(batch.to(self.null_embed.device))[0]

    @staticmethod
    def full_resolution(mask_logits: torch.Tensor, padded_size, image_size) -> torch.Tensor:
        """Mask logits (B, Q, h, w) of the padded image -> (B, Q, H, W) on the unpadded image (bilinear)."""
        up = F.interpolate(mask_logits, size=tuple(padded_size), mode="bilinear", align_corners=False)
        return up[..., : image_size[0], : image_size[1]]

    # ----------------------------------------------------------------------------------------------- training
    def mask_targets(self, label_image: torch.Tensor, padded_size) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """2D targets of the Mask2Former losses: per view (labels (T,), masks (T, H_pad, W_pad) bool), one mask per
        base class present in the label image (semantic masks, as the official implementation)."""
        out = []
        for lab in label_image:
            classes = torch.unique(lab[lab >= 0])
            masks = torch.zeros(len(classes), *padded_size, dtype=torch.bool, device=lab.device)
            masks[:, : lab.shape[0], : lab.shape[1]] = lab[None] == classes[:, None, None]
            out.append((classes, masks))
        return out

    def training_losses(self, batch: Mapping[str, Any], step: int) -> dict[str, torch.Tensor]:
        """The trainer's interface: Eq. 8 for a collated batch (``training.xmask3d.collate_views``: the ViewBatch
        fields as tensors, ``caption`` left out, plus ``captions``, the view captions as text, embedded here by the
        frozen text encoder) at optimizer step ``step``, i.e. epoch step / steps_per_epoch. Returns
        {"loss": total, term: weighted value} with every term present (L_mask 0 before its start epoch)."""
        views = {f.name: batch[f.name] for f in fields(ViewBatch) if batch.get(f.name) is not None}
        if batch.get("captions"):
            views["caption"] = self.embed_captions(batch["captions"])
        views = ViewBatch(**views)
        total, terms = self.loss(views, self(views), progress=step / self.steps_per_epoch)
        terms.setdefault("mask", total.new_zeros(()))  # logged as 0 before its start epoch: one log schema
        return {"loss": total, **terms}

    def loss(self, batch: ViewBatch, out: XMask3DOutput, progress: float = 0.0) -> tuple[torch.Tensor, dict]:
        """Eq. 8 for a batch and its forward outputs. progress: the trainer's epoch (L_mask is on from
        ``loss.mask_loss_start``). Returns (total, {term: weighted value})."""
        cfg = self.cfg.loss
        base_text = self.embed_classes(self.base_classes)
        terms: dict[str, torch.Tensor] = {}
        if batch.labels is not None:
            terms["seg_3d"] = segmentation_ce(self.classifier(out.f3d, base_text), batch.labels)
            terms["seg_fuse"] = segmentation_ce(self.classifier(out.f_fuse, base_text), batch.labels)
        if batch.label_image is not None:
            targets = self.mask_targets(batch.label_image, self._padded(out.image_size))
            class_text = torch.cat([base_text, self.null_embed])
            layers = [(self.classifier(p.mask_embed, class_text), p.mask_logits) for p in out.predictions]
            terms.update(self.criterion(layers, targets))
        if batch.caption is not None:
            slices = batch.point_slices()
            f3d_view = torch.stack([out.f3d[s].mean(0) for s in slices])
            fuse_view = torch.stack([out.f_fuse[s].mean(0) for s in slices])
            terms["view_3d"] = view_alignment_loss(f3d_view, batch.caption)
            terms["view_fuse"] = view_alignment_loss(fuse_view, batch.caption)
            views = [i for i, s in enumerate(slices) if bool(out.has_2d[s].any())]
            if views:  # the 2D feature of a view: mean F2d over its points inside a mask
                f2d_view = torch.stack([out.f2d[slices[i]][out.has_2d[slices[i]]].mean(0) for i in views])
                terms["view_2d"] = view_alignment_loss(f2d_view, batch.caption[views])
        mask_active = progress >= cfg.mask_loss_start
        if mask_active and cfg.mask > 0:
            terms["mask"] = self.mask_loss(batch, out)
        if out.novel_logits is not None and batch.is_novel is not None:
            terms["binary"] = binary_loss(out.novel_logits, batch.is_novel, cfg.binary_base_weight)
        return total_loss(terms, cfg, mask_active)

    def mask_loss(self, batch: ViewBatch, out: XMask3DOutput) -> torch.Tensor:
        """L_mask (Eq. 6) between mask-pooled F3d (Eq. 5) and MaskCLIP embeddings of the same masks."""
        final = out.predictions[-1]
        logits = self.full_resolution(final.mask_logits.detach(), self._padded(out.image_size), out.image_size)
        g_clip = self.maskclip(batch.image, logits)
        g3d, target = [], []
        for b, (rows, m) in enumerate(zip(batch.point_slices(), out.m3d)):
            pooled, count = mask_pool(out.f3d[rows], m)
            keep = count >= self.cfg.loss.min_mask_points
            g3d.append(pooled[keep])
            target.append(g_clip[b][keep])
        return mask_alignment_loss(torch.cat(g3d), torch.cat(target))

    # ----------------------------------------------------------------------------------------------- inference
    def class_probabilities(self, batch: ViewBatch, out: XMask3DOutput, vocab_text: torch.Tensor,
                            is_base: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point class probabilities (P, L) and features (P, D) for a mode, after calibration (Eq. 13)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        inf = self.cfg.inference
        feats = {"3d": out.f3d, "2d": out.f2d, "fused": out.f_fuse, "ensemble": out.f_fuse}[mode]
        probs = self.classifier(feats, vocab_text).softmax(-1)
        if mode == "2d":
            probs, feats = self._fill_from_masked(batch, out, probs, feats)
        if mode == "ensemble":
            final = out.predictions[-1]
            logits = self.full_resolution(final.mask_logits, self._padded(out.image_size), out.image_size)
            g_clip = self.maskclip(batch.image, logits)
            p_aux = (self.maskclip.logit_scale * F.normalize(g_clip, dim=-1) @ F.normalize(vocab_text, dim=-1).t())
            p_aux = p_aux.softmax(-1)  # (B, Q, L)
            lam = torch.where(is_base, inf.lambda_base, inf.lambda_novel).to(probs)
            for b, (rows, m) in enumerate(zip(batch.point_slices(), out.m3d)):
                covered = m.any(1)
                if bool(covered.any()):
                    mask_id = m[covered].float().argmax(1)
                    view_probs = probs[rows]  # a view: writes go to probs
                    view_probs[covered] = geometric_ensemble(view_probs[covered], p_aux[b][mask_id], lam)
        if inf.calibrate and out.novel_logits is not None:
            s_b = out.novel_logits.sigmoid()
            if inf.hard_calibration:
                s_b = (s_b > 0.5).to(probs.dtype)
            probs = calibrate(probs, s_b, is_base)
        return probs, feats

    def _padded(self, image_size) -> tuple[int, int]:
        div = self.diffusion.size_divisibility
        return image_size[0] + -image_size[0] % div, image_size[1] + -image_size[1] % div

    @staticmethod
    def _fill_from_masked(batch: ViewBatch, out: XMask3DOutput, probs, feats):
        """2D-only mode: points outside every mask take the prediction of the nearest masked point of their view
        (in voxel-grid coordinates), as the official evaluation does; views without masks keep their values."""
        probs, feats = probs.clone(), feats.clone()
        coords = batch.grid_coord[batch.point_voxel].float().cpu().numpy()
        for rows in batch.point_slices():
            has = out.has_2d[rows].cpu().numpy()
            if has.all() or not has.any():
                continue
            src, dst = np.flatnonzero(has) + rows.start, np.flatnonzero(~has) + rows.start
            nearest = src[cKDTree(coords[src]).query(coords[dst])[1]]
            probs[dst], feats[dst] = probs[nearest], feats[nearest]
        return probs, feats

    @torch.no_grad()
    def predict(self, data: RGBDFrame | Scene, vocabulary: Sequence[str], mode: str | None = None,
                frame_stride: int = 1, pixel_stride: int = 4, image_scale: float = 1.0) -> Prediction:
        """Open-vocabulary labels for a frame (its back-projected depth pixels, every pixel_stride-th row/column)
        or a scene (its labelled point cloud, voting over every frame_stride-th frame; points seen by no frame take
        the nearest seen point's result). vocabulary: class names; classes also in the training base classes count
        as base for Eq. 13 and 16. mode: "3d", "2d", "fused" or "ensemble" (default: inference.mode).
        image_scale: the 2D branch sees the colour images resized by this factor (the training image size);
        visibility is tested at full resolution."""
        mode = mode or self.cfg.inference.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        vocabulary = list(vocabulary)
        if not vocabulary:
            raise ValueError("vocabulary must name at least one class")
        was_training = self.training
        self.eval()
        try:
            vocab_text = self.embed_classes(vocabulary)
            is_base = torch.tensor([v in set(self.base_classes) for v in vocabulary], device=vocab_text.device)
            if isinstance(data, RGBDFrame):
                return self._predict_frame(data, vocab_text, is_base, mode, pixel_stride, image_scale)
            if isinstance(data, Scene):
                return self._predict_scene(data, vocab_text, is_base, mode, frame_stride, image_scale)
            raise TypeError(f"predict takes an RGBDFrame or a Scene, got {type(data).__name__}")
        finally:
            self.train(was_training)

    def _run_view(self, image, points, colors, pixel_index, vocab_text, is_base, mode, image_scale):
        h, w = image.shape[:2]
        pixel_index = downsample_pixel_index(pixel_index, w, h, image_scale)
        image = downsample_image(image, image_scale)
        batch = make_view_batch([image], [points], [colors], [pixel_index], self.cfg.voxel_size)
        batch = batch.to(self.null_embed.device)
        out = self(batch, vocab_text)
        probs, feats = self.class_probabilities(batch, out, vocab_text, is_base, mode)
        return probs, F.normalize(feats, dim=-1)

    def _predict_frame(self, frame: RGBDFrame, vocab_text, is_base, mode, pixel_stride, image_scale) -> Prediction:
        if frame.color is None:
            raise ValueError("XMask3D needs the colour image of the frame")
        points, pixel = backproject_depth(frame.camera, frame.depth, stride=pixel_stride)
        if len(points) == 0:
            raise ValueError("the frame has no valid depth pixels")
        colors = frame.color.reshape(-1, 3)[pixel]
        probs, feats = self._run_view(frame.color, points, colors, pixel, vocab_text, is_base, mode, image_scale)
        if frame.pose is not None:
            points = transform_points(frame.pose, points).astype(np.float32)
        scores, labels = probs.max(-1)
        return Prediction(labels.cpu().numpy(), scores.float().cpu().numpy(), feats.float().cpu().numpy(), points)

    def _predict_scene(self, scene: Scene, vocab_text, is_base, mode, frame_stride, image_scale) -> Prediction:
        if scene.points is None or scene.colors is None:
            raise ValueError(f"scene {scene.name!r} has no coloured point cloud to label")
        inf = self.cfg.inference
        n, dev = len(scene.points), vocab_text.device
        prob_sum = torch.zeros(n, len(vocab_text), device=dev)
        feat_sum = torch.zeros(n, self.cfg.feature_dim, device=dev)
        votes = torch.zeros(n, device=dev)
        for frame in scene.frames[::frame_stride]:
            if frame.color is None or frame.pose is None:
                continue
            pixel = point_pixel_index(scene.points, frame.camera, frame.pose, frame.depth, inf.depth_abs_tol,
                                      inf.depth_rel_tol)
            seen = np.flatnonzero(pixel >= 0)
            if len(seen) == 0:
                continue
            probs, feats = self._run_view(frame.color, scene.points[seen], scene.colors[seen], pixel[seen],
                                          vocab_text, is_base, mode, image_scale)
            idx = torch.as_tensor(seen, device=dev)
            prob_sum.index_add_(0, idx, probs.float())
            feat_sum.index_add_(0, idx, feats.float())
            votes.index_add_(0, idx, torch.ones(len(seen), device=dev))
        seen = (votes > 0).cpu().numpy()
        if not seen.any():
            raise ValueError(f"no frame of scene {scene.name!r} sees any of its points")
        probs = (prob_sum / votes.clamp_min(1)[:, None]).cpu().numpy()
        feats = F.normalize(feat_sum, dim=-1).cpu().numpy()
        if not seen.all():
            src = np.flatnonzero(seen)
            nearest = src[cKDTree(scene.points[src]).query(scene.points[~seen])[1]]
            probs[~seen], feats[~seen] = probs[nearest], feats[nearest]
        labels = probs.argmax(-1)
        return Prediction(labels.astype(np.int64), probs.max(-1).astype(np.float32), feats.astype(np.float32))


def open_clip_model(encoder) -> nn.Module:
    """The open_clip CLIP model behind a (cached) open_clip text encoder, with its image tower."""
    model = getattr(getattr(encoder, "encoder", encoder), "model", None)
    if not hasattr(getattr(model, "visual", None), "class_embedding"):
        raise ValueError("clip.model_name null shares the text encoder's CLIP image tower: use an open_clip text "
                         "encoder with a ViT image tower (text_only false), or name the CLIP model in clip")
    return model


def text_parameter_count(encoder) -> int:
    """Parameters of a text encoder's text side: an open_clip model without its image tower (0 when the encoder
    exposes no ``model``)."""
    model = getattr(getattr(encoder, "encoder", encoder), "model", None)
    if not isinstance(model, nn.Module):
        return 0
    visual = {id(p) for p in model.visual.parameters()} if isinstance(model.visual, nn.Module) else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in visual)


def config_from_dict(data: Mapping[str, Any]) -> XMask3DConfig:
    """An XMask3DConfig from a mapping (the ``model`` section of a config file, without ``type``)."""
    return from_dict(XMask3DConfig, {k: v for k, v in data.items() if k != "type"}, "model")


@REGISTRY.register("model", "XMask3D")
def build_xmask3d_from_kwargs(**kwargs: Any) -> XMask3D:
    """REGISTRY factory: ``REGISTRY.build("model", {"type": "XMask3D", **model_config})``."""
    return XMask3D(config_from_dict(kwargs))


def build_xmask3d(config: str | Mapping[str, Any] | XMask3DConfig) -> XMask3D:
    """XMask3D from a shipped config name (e.g. "xmask3d_scannet"), a YAML path, a mapping or a config object.
    Files hold the model under ``model:``."""
    if isinstance(config, XMask3DConfig):
        return XMask3D(config)
    data = load_yaml(config)["model"] if isinstance(config, str) else dict(config)
    if data.get("type", "XMask3D") != "XMask3D":
        raise ValueError(f"not an XMask3D config (type {data['type']!r})")
    return XMask3D(config_from_dict(data))


__all__ = ["MODES", "Prediction", "ViewBatch", "XMask3D", "XMask3DConfig", "XMask3DOutput",
           "build_xmask3d", "make_view_batch"]
