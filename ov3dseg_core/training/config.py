"""The training configuration (one YAML file): split, data, model, view samples and trainer settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ov3dseg_core.config import load_yaml
from ov3dseg_core.models.open_vocab3d import OpenVocab3DConfig
from ov3dseg_core.training.trainer import TrainerConfig
from ov3dseg_core.training.map_windows import MapWindowConfig


@dataclass
class TrainDataConfig:
    """Training and held-out scenes: dataset paths (any format ``open_scene`` reads) and/or simulated scenes.

    Simulated scenes ``sim_seed_start .. sim_seed_start + sim_scenes - 1`` (and the validation and held-out ones;
    the three seed ranges must not overlap) are generated
    with ``ov3dseg sim``'s generator on first use and cached as dataset folders under ``cache_dir``.
    """

    scene_dirs: list[str] = field(default_factory=list)
    heldout_dirs: list[str] = field(default_factory=list)
    sim_seed_start: int = 0
    sim_scenes: int = 0
    val_seed_start: int = 50_000      # validation scenes: tuning and query calibration, never trained on
    val_scenes: int = 0
    heldout_seed_start: int = 100_000  # held-out scenes: reported once, never tuned on
    heldout_scenes: int = 0
    sim_frames: int = 16
    sim_width: int = 640              # simulated camera image size, pixels
    sim_height: int = 480
    cache_dir: str = "out/sim_cache"


@dataclass
class TrainConfig:
    split: str = "sim_b15n4"
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    model: OpenVocab3DConfig = field(default_factory=OpenVocab3DConfig)
    method: dict[str, Any] = field(default_factory=dict)  # a distillation method ({"type": "SAS", ...}); empty: model
    windows: MapWindowConfig = field(default_factory=MapWindowConfig)
    class_weight_power: float = 0.5   # L_seg class weights: base-class voxel frequency ** -power (0 = unweighted)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    out_dir: str = "out/train"


def model_type(name_or_path: str | Path) -> str | None:
    """The ``model.type`` of a training config file (None for the default OpenVocab3D configs, which have none);
    "XMask3D" configs are ``training.xmask3d.XMask3DTrainConfig`` files."""
    model = load_yaml(name_or_path).get("model")
    return model.get("type") if isinstance(model, dict) else None
