"""The interface every distillation method (SAS, GeoGuide) implements, and its registry (REGISTRY group "method").

A method is an ``nn.Module`` with

- ``forward(data) -> (N, D)`` unit text-space point features from ``grid_coord`` (N, 3), ``feat`` (N, 4) (RGB in
  [-1, 1] and height, ``models.voxel_inputs``) and ``offset`` (B,), so ``MapSegmenter`` runs it like the default;
- ``training_losses(batch, step) -> {"loss": total, ...}`` over batches of ``methods.data.collate_distill``;
- ``lr_lambda(max_steps)``: its learning-rate multiplier per step (SAS: linear decay);
- ``train_state_dict()`` / ``load_train_state_dict(state)``: training state outside the weights (SAS: the TESD
  feature bank), kept in the trainer's resume state;
- a config dataclass ``config_class`` (built from the YAML's ``method:`` mapping, whose ``type`` names the method)
  and a constructor ``(config, vocab_text)`` with vocab_text (K, D) the unit embeddings of its vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from ov3dseg_core.config import from_dict
from ov3dseg_core.models.superpoints import SuperpointConfig
from ov3dseg_core.models.text import DEFAULT_TEMPLATE
from ov3dseg_core.registry import REGISTRY


@dataclass
class TeacherConfig:
    """The 2D teachers and how their features reach the points.

    dense / mask / captioner: REGISTRY "teacher" configs (offline stand-ins by default; a real plug-in registers
    its own type, loads weights from a local path and accepts the ``label_names``/``embed``/``seed`` keywords);
    frame_stride: fuse every n-th frame; depth_rel_tol: depth test sigma / D (0.2 ScanNet-like, 0.02
    Matterport-like); mask_stride: grid of the painted masks (image / stride); capability_images: synthetic
    images per class for the capability estimate (m); seed: the stand-ins' noise.
    """

    dense: dict[str, Any] = field(default_factory=lambda: {"type": "SimDenseTeacher"})
    mask: dict[str, Any] = field(default_factory=lambda: {"type": "SimMaskTeacher"})
    captioner: dict[str, Any] = field(default_factory=lambda: {"type": "SimCaptioner"})
    frame_stride: int = 1
    depth_rel_tol: float = 0.2
    mask_stride: int = 4
    capability_images: int = 8
    seed: int = 0


@dataclass
class MethodConfig:
    """Settings common to the methods.

    vocabulary: the prebuilt class vocabulary (SAS Tab. 9) used by capability fusion and TESD, names only (empty:
    the split's evaluated classes); fusion: how the teachers' point features become the target
    (teachers.fusion.FUSION_RULES); tau: Eq. 8 temperature; superpoints: the Felzenszwalb segmentation of the
    training voxels (on normals only: the methods' superpoints read no colour); min_lr_ratio: the linear schedule
    ends at lr * min_lr_ratio.
    """

    text_encoder: str = "minilm"
    text_dim: int = 384
    prompt_template: str = DEFAULT_TEMPLATE
    vocabulary: list[str] = field(default_factory=list)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    fusion: str = "capability"
    tau: float = 0.1
    superpoints: SuperpointConfig = field(default_factory=lambda: SuperpointConfig(max_size=300, color_weight=0.0))
    min_lr_ratio: float = 0.1


class DistillationMethod(nn.Module):
    """Base class: a 3D model distilled from fused 2D teacher features."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig, vocab_text: torch.Tensor):
        super().__init__()
        self.cfg = config
        self.register_buffer("vocab_text", nn.functional.normalize(vocab_text.float(), dim=-1))

    def train_state_dict(self) -> dict[str, Any]:
        """Training state beside the weights (saved with the optimizer's by the trainer, restored on resume)."""
        return {}

    def load_train_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``train_state_dict`` returned."""

    def lr_lambda(self, max_steps: int) -> Callable[[int], float]:
        """Linear decay from 1 to ``min_lr_ratio`` over ``max_steps`` (SAS: 1e-4 -> 1e-5)."""
        end = self.cfg.min_lr_ratio
        return lambda step: 1.0 - (1.0 - end) * min(1.0, step / max(1, max_steps))


def method_class(method: Mapping[str, Any]) -> type[DistillationMethod]:
    if "type" not in method:
        raise KeyError(f"method config needs a 'type' (one of {REGISTRY.names('method')})")
    return REGISTRY.get("method", method["type"])


def method_config(method: Mapping[str, Any]) -> MethodConfig:
    """The method's config dataclass from the YAML ``method:`` mapping."""
    cls = method_class(method)
    return from_dict(cls.config_class, {k: v for k, v in method.items() if k != "type"}, "method")

