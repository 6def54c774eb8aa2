"""Training and evaluating the full XMask3D on scenes (``ov3dseg train xmask3d_tiny``, ``ov3dseg evaluate``).

A training sample is one view of a scene, as in the paper ("a corner of the room"): the frame's colour image
resized to ``views.image_size``, the scene points the frame sees (depth test at full resolution; at most
``views.max_points``), their colours, their pixels in the resized image (from K, the pose and the depth), the
label image and a view caption. Which signal reaches which loss (Eq. 8):

- base-class labels (scene point labels and label-image pixels; every novel, ignored or unknown class -> -1):
  L3d_seg and Lfuse_seg (per-point CE, Eq. 14) and L2d_seg (Mask2Former class CE, sigmoid CE, dice and focal
  losses on one semantic mask per base class in the view);
- "labelled but not a base class" (what an annotation of the base classes leaves as 'other'; never a class name):
  L_bi, the binary head;
- view captions of the simulated captioner (``captions.view_caption``: synonyms, look-alike mistakes, dropped
  objects; ``views.captioner`` plugs in a real one), embedded by the frozen CLIP text encoder: L_view^3d,
  L_view^2d, L_view^fuse. Captions are the only channel that names novel classes;
- MaskCLIP embeddings of the predicted masks from the frozen CLIP image tower (no labels at all): L_mask, switched
  on at epoch ``model.loss.mask_loss_start``.

The ``train:`` block gives the paper's schedule: AdamW with two learning rates (3D networks ``lr_3d``, the rest
``lr_other``), a cosine decay over ``epochs`` (an epoch = every view once; steps = epochs * ceil(views /
batch_size)). Real-size configs take the same path on GPUs: ``torchrun --nproc-per-node N -m ov3dseg_core.cli
train xmask3d_scannet`` with ``data.scene_dirs`` pointing at dataset folders (each rank loads batch_size / N views).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ov3dseg_core.config import from_dict, load_yaml, to_dict
from ov3dseg_core.data.frames import RGBDFrame, Scene
from ov3dseg_core.eval.evaluate import EvalReport, combine_reports, evaluate_labels
from ov3dseg_core.eval.splits import Split, load_split, name_mapping
from ov3dseg_core.models.lifting import (downsample_image, downsample_nearest, downsample_pixel_index,
                                         point_pixel_index, scaled_size)
from ov3dseg_core.models.xmask3d import XMask3D, build_xmask3d, make_view_batch
from ov3dseg_core.registry import REGISTRY
from ov3dseg_core.safetensors_file import CheckpointError
from ov3dseg_core.training.captions import CaptionerConfig, SeenObject, view_caption
from ov3dseg_core.training.config import TrainDataConfig
from ov3dseg_core.training.map_windows import base_targets, novel_targets
from ov3dseg_core.training.trainer import TrainerConfig, warmup_cosine
from ov3dseg_core.training import view_captioners  # noqa: F401  (registers "ViTGPT2Captioner")


@dataclass
class ViewDataConfig:
    """How scenes become views. image_size: (H, W) pixels the 2D branch sees (frames are resized by W / frame
    width; the aspect must match); frame_stride: every n-th frame is a view; max_points: visible points kept per
    view (random subset); min_points: a view seeing fewer points is replaced by the next one; depth_abs_tol /
    depth_rel_tol: visibility test (metres / fraction of depth); min_object_points: objects with fewer visible
    points are not in the caption; rotate / scale_range: augmentation of the 3D input only (rotation about z,
    isotropic scale; the pixel correspondences are unchanged); captioner: a REGISTRY "view_captioner" config
    (default the simulated ``SimViewCaptioner``; ``ViTGPT2Captioner`` (training/view_captioners.py) loads a
    VisionEncoderDecoder captioner from a local folder and captions the frame's colour image)."""

    image_size: list[int] = field(default_factory=lambda: [240, 320])
    frame_stride: int = 1
    max_points: int = 20000
    min_points: int = 64
    depth_abs_tol: float = 0.05
    depth_rel_tol: float = 0.02
    min_object_points: int = 20
    rotate: bool = True
    scale_range: list[float] = field(default_factory=lambda: [0.9, 1.1])
    captioner: dict[str, Any] = field(default_factory=lambda: {"type": "SimViewCaptioner"})


@dataclass
class ScheduleConfig:
    """The ``train:`` block. epochs: passes over all views; batch_size: views per optimizer step over all ranks;
    lr_3d / lr_other: AdamW learning rates of the 3D networks (backbone, binary head) and of everything else;
    scheduler: "cosine" (from lr to lr * min_lr_ratio over all steps, after warmup_steps of linear warm-up);
    max_steps: > 0 overrides epochs * steps per epoch (smoke runs); the rest as ``trainer.TrainerConfig``."""

    epochs: int = 150
    batch_size: int = 64
    lr_3d: float = 1e-3
    lr_other: float = 1e-4
    weight_decay: float = 0.01
    scheduler: str = "cosine"
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    max_steps: int = 0
    grad_clip_norm: float = 0.0
    amp: bool = True
    log_every: int = 10
    checkpoint_every: int = 500
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"


@dataclass
class XMask3DTrainConfig:
    """A training config file whose ``model`` has ``type: XMask3D``: the model mapping (XMask3DConfig fields),
    scenes, views and schedule."""

    model: dict[str, Any] = field(default_factory=dict)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    views: ViewDataConfig = field(default_factory=ViewDataConfig)
    train: ScheduleConfig = field(default_factory=ScheduleConfig)
    out_dir: str = "out/train/xmask3d"


def load_train_config(name_or_path: str | Path) -> XMask3DTrainConfig:
    return from_dict(XMask3DTrainConfig, load_yaml(name_or_path))


# ------------------------------------------------------------------------------------------------------- views
@REGISTRY.register("view_captioner", "SimViewCaptioner")
class SimViewCaptioner:
    """The simulated view captioner (``captions.view_caption``): a sentence naming most objects in view, with
    synonyms, look-alike mistakes and dropped objects at the rates of ``CaptionerConfig`` (the keyword arguments).

    The view-captioner interface: ``__call__(image (H, W, 3) uint8 RGB, objects: what is in view, rng) -> str``;
    a real captioner uses only ``image``, this stand-in only ``objects``."""

    def __init__(self, **config: Any):
        self.cfg = from_dict(CaptionerConfig, config, "views.captioner")

    def __call__(self, image: np.ndarray, objects: Sequence[SeenObject], rng: np.random.Generator) -> str:
        return view_caption(objects, rng, self.cfg)


def image_scale(camera_width: int, camera_height: int, image_size: Sequence[int]) -> float:
    """The resize factor W / camera width; raises ValueError when (H, W) does not keep the camera's aspect."""
    factor = image_size[1] / camera_width
    if scaled_size(camera_height, camera_width, factor) != tuple(image_size):
        raise ValueError(f"views.image_size {list(image_size)} does not keep the {camera_width}x{camera_height} "
                         f"camera's aspect (H would be {scaled_size(camera_height, camera_width, factor)[0]})")
    return factor


def seen_objects(scene: Scene, seen: np.ndarray, min_points: int) -> list[SeenObject]:
    """The objects among scene points ``seen`` (indices) as a captioner would see them: one per instance with at
    least ``min_points`` labelled points, named by its majority class (one per class when the scene has no
    instances)."""
    lab = scene.labels[seen]
    inst = lab if scene.instances is None else scene.instances[seen]
    keep = (inst >= 0) & (lab >= 0)
    ids, inverse, counts = np.unique(inst[keep], return_inverse=True, return_counts=True)
    points, colors, lab = scene.points[seen][keep], scene.colors[seen][keep], lab[keep]
    objects = []
    for k in np.flatnonzero(counts >= min_points):
        member = inverse == k
        name = scene.label_names[int(np.bincount(lab[member]).argmax())]
        objects.append(SeenObject(name, colors[member].mean(axis=0), np.ptp(points[member], axis=0)))
    return objects


def view_sample(scene: Scene, frame: RGBDFrame, base_classes: Sequence[str], cfg: ViewDataConfig,
                captioner: Callable, rng: np.random.Generator) -> dict[str, Any] | None:
    """One training view (None when it sees fewer than ``min_points`` points): image (h, w, 3) uint8, points
    (P, 3) float32 metres (world frame, augmented), colors (P, 3) uint8, pixel_index (P,) int64 into the resized
    image, labels (P,) base-class index or -1, is_novel (P,) 1 labelled-not-base / 0 base / -1 unlabelled,
    label_image (h, w) base-class index or -1 (the frame's label image, or the visible points' labels drawn into
    their pixels when the frame has none, as raw ScanNet), caption (str)."""
    if frame.color is None or frame.pose is None:
        raise ValueError(f"scene {scene.name}: training views need colour and a pose")
    if scene.points is None or scene.labels is None or scene.colors is None:
        raise ValueError(f"scene {scene.name}: training needs a labelled, coloured point cloud")
    cam = frame.camera
    factor = image_scale(cam.width, cam.height, cfg.image_size)
    pixel = point_pixel_index(scene.points, cam, frame.pose, frame.depth, cfg.depth_abs_tol, cfg.depth_rel_tol)
    seen = np.flatnonzero(pixel >= 0)
    if len(seen) < cfg.min_points:
        return None
    caption = captioner(frame.color, seen_objects(scene, seen, cfg.min_object_points), rng)
    if len(seen) > cfg.max_points:
        seen = np.sort(rng.choice(seen, cfg.max_points, replace=False))
    label_image = base_targets(view_label_image(scene, frame, pixel, factor), scene.label_names, base_classes)
    point_labels = scene.labels[seen]
    labels = base_targets(point_labels, scene.label_names, base_classes)
    return {
        "image": downsample_image(frame.color, factor),
        "points": augment_points(scene.points[seen], cfg, rng),
        "colors": scene.colors[seen],
        "pixel_index": downsample_pixel_index(pixel[seen], cam.width, cam.height, factor),
        "labels": labels,
        "is_novel": novel_targets(point_labels, scene.label_names, base_classes),
        "label_image": label_image,
        "caption": caption,
    }


def view_label_image(scene: Scene, frame: RGBDFrame, pixel: np.ndarray, factor: float) -> np.ndarray:
    """(h, w) int dataset class ids of the resized view: the frame's label image, or else the labels of the scene
    points seen at each pixel (``pixel`` (N,) full-resolution indices of all scene points, -1 unseen; the last
    point wins a pixel, unlabelled pixels -1)."""
    cam = frame.camera
    if frame.labels is not None:
        return downsample_nearest(frame.labels, factor)
    h, w = scaled_size(cam.height, cam.width, factor)
    seen = np.flatnonzero(pixel >= 0)
    image = np.full(h * w, -1, dtype=np.int64)
    image[downsample_pixel_index(pixel[seen], cam.width, cam.height, factor)] = scene.labels[seen]
    return image.reshape(h, w)


def augment_points(points: np.ndarray, cfg: ViewDataConfig, rng: np.random.Generator) -> np.ndarray:
    """Points (P, 3) rotated about z through their centre by a random angle (when ``rotate``) and scaled."""
    centre = points.mean(axis=0)
    angle = rng.uniform(0, 2 * np.pi) if cfg.rotate else 0.0
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    scale = rng.uniform(*cfg.scale_range)
    return ((points - centre) @ rot.T * scale + centre).astype(np.float32)


class SceneViewDataset(Dataset):
    """Every ``frame_stride``-th frame of every scene as a view sample (``view_sample``); samples are a
    deterministic function of (seed, epoch, index)."""

    def __init__(self, scenes: Sequence[Scene], base_classes: Sequence[str], cfg: ViewDataConfig, seed: int = 0):
        self.scenes, self.base_classes, self.cfg, self.seed = list(scenes), list(base_classes), cfg, seed
        self.views = [(i, j) for i, s in enumerate(self.scenes) for j in range(0, len(s.frames), cfg.frame_stride)]
        self.captioner = REGISTRY.build("view_captioner", cfg.captioner)
        self.epoch = 0
        if not self.views:
            raise ValueError("no views: the training config names no scenes (data.sim_scenes / data.scene_dirs)")

    def __len__(self) -> int:
        return len(self.views)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        for k in range(len(self.views)):  # a view that sees (almost) nothing gives way to the next one
            i, j = self.views[(index + k) % len(self.views)]
            sample = view_sample(self.scenes[i], self.scenes[i].frames[j], self.base_classes, self.cfg,
                                 self.captioner, rng)
            if sample is not None:
                return sample
        raise ValueError(f"no view sees {self.cfg.min_points} points")


def collate_views(samples: Sequence[dict[str, Any]], voxel_size: float) -> dict[str, Any]:
    """The trainer's batch: the ``ViewBatch`` fields as tensors (``caption`` left out), ``captions`` (B,) str and
    ``batch_size``; ``XMask3D.training_losses`` embeds the captions."""
    def column(key):
        return [s[key] for s in samples]

    batch = make_view_batch(column("image"), column("points"), column("colors"), column("pixel_index"), voxel_size,
                            column("labels"), column("is_novel"), column("label_image"))
    fields = {k: v for k, v in vars(batch).items() if v is not None}
    return {**fields, "captions": column("caption"), "batch_size": len(samples)}


# ------------------------------------------------------------------------------------------------------- schedule
def steps_per_epoch(num_views: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps of one pass over the views with a global batch of ``batch_size`` views."""
    return max(1, math.ceil(num_views / (rank_batch_size(batch_size, world_size) * world_size)))


def rank_batch_size(batch_size: int, world_size: int) -> int:
    return max(1, batch_size // world_size)


def trainer_config(schedule: ScheduleConfig, max_steps: int, world_size: int = 1) -> TrainerConfig:
    """The generic trainer's settings for a schedule (``fit`` replaces its optimizer by the two-lr AdamW; the
    schedule stays ``trainer.warmup_cosine``)."""
    if schedule.scheduler != "cosine":
        raise ValueError(f"train.scheduler {schedule.scheduler!r} is not supported (cosine)")
    return TrainerConfig(max_steps=max_steps, batch_size=rank_batch_size(schedule.batch_size, world_size),
                         lr=schedule.lr_other, weight_decay=schedule.weight_decay, warmup_steps=schedule.warmup_steps,
                         min_lr_ratio=schedule.min_lr_ratio, grad_clip_norm=schedule.grad_clip_norm,
                         amp=schedule.amp, log_every=schedule.log_every, checkpoint_every=schedule.checkpoint_every,
                         num_workers=schedule.num_workers, seed=schedule.seed, device=schedule.device)


def checkpoint_config(model: XMask3D, cfg: XMask3DTrainConfig) -> dict[str, Any]:
    """What a checkpoint embeds: the resolved model config (``build_xmask3d`` input) and the training set-up."""
    return {"model": {"type": "XMask3D", **to_dict(model.cfg)}, "data": to_dict(cfg.data),
            "views": to_dict(cfg.views), "train": to_dict(cfg.train)}


def fit(model: XMask3D, scenes: Sequence[Scene], cfg: XMask3DTrainConfig, resume: bool = True):
    """Train ``model`` on views of ``scenes`` with the schedule of ``cfg.train``; returns the trainer's result
    (final checkpoint path, logged history)."""
    from ov3dseg_core.training.trainer import Trainer

    dataset = SceneViewDataset(scenes, model.base_classes, cfg.views, seed=cfg.train.seed)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_epoch = steps_per_epoch(len(dataset), cfg.train.batch_size, world)
    max_steps = cfg.train.max_steps or cfg.train.epochs * per_epoch
    model.steps_per_epoch = per_epoch
    trainer = Trainer(model, dataset, partial(collate_views, voxel_size=model.cfg.voxel_size),
                      trainer_config(cfg.train, max_steps, world), cfg.out_dir,
                      checkpoint_config=checkpoint_config(model, cfg), vocabulary=model.base_classes)
    trainer.optimizer = torch.optim.AdamW(model.param_groups(cfg.train.lr_3d, cfg.train.lr_other),
                                          weight_decay=cfg.train.weight_decay)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer,
                                                          lambda step: warmup_cosine(step, trainer.cfg))
    print(f"training XMask3D on {len(dataset)} views of {len(scenes)} scenes: {max_steps} steps "
          f"({per_epoch} an epoch, L_mask from epoch {model.cfg.loss.mask_loss_start}); base classes "
          f"{model.base_classes}; novel (captions only) {model.novel_classes}")
    return trainer.fit(resume=resume)


def initial_xmask3d(model_config: dict[str, Any], init: str | Path | None = None) -> XMask3D:
    """The model a training (or a user) starts from: ``build_xmask3d(model_config)``, then with ``init``

    - converted released weights (``ov3dseg convert-checkpoint --format xmask3d``): the conversion's
      ``model_config`` entries (the released architecture: MinkUNet34C, 768-d, ...) are merged into the config
      first (one level deep), and the converted modules are filled in; the others keep their initialisation;
    - or an ov3dseg XMask3D checkpoint: its weights (``load_checkpoint_state``), for the config's architecture.

    CheckpointError when ``init`` is neither.
    """
    from ov3dseg_core.models.backbones import load_converted, load_converted_state
    from ov3dseg_core.training.checkpoint import load_checkpoint

    if init is None:
        return build_xmask3d(model_config)
    try:
        weights = load_converted(init)
    except CheckpointError as not_converted:
        try:
            state = load_checkpoint(init).state_dict
        except CheckpointError as not_checkpoint:
            raise CheckpointError(f"{init} is neither converted weights ({not_converted}) nor an ov3dseg "
                                  f"checkpoint ({not_checkpoint})") from None
        model = build_xmask3d(model_config)
        model.load_checkpoint_state({k: v.float() for k, v in state.items()})
        return model
    merged = dict(model_config)
    for key, value in weights.report.model_config.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    model = build_xmask3d(merged)
    load_converted_state(model, weights)
    return model


def load_xmask3d(path: str | Path, device: str | torch.device = "cpu") -> XMask3D:
    """An XMask3D from a checkpoint written by ``ov3dseg train`` on an XMask3D config, in eval mode."""
    from ov3dseg_core.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.config.get("model", {}).get("type") != "XMask3D":
        raise ValueError(f"{path} is not an XMask3D checkpoint")
    model = build_xmask3d(ckpt.config["model"])
    model.load_checkpoint_state({k: v.float() for k, v in ckpt.state_dict.items()})
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------------- evaluation
def evaluate_views(model: XMask3D, scenes: Sequence[Scene], split: Split, mode: str | None = None,
                   image_size: Sequence[int] | None = None, frame_stride: int = 1) -> EvalReport:
    """Base / novel / hIoU over ``scenes``' labelled points from ``model.predict`` on each scene (every
    frame_stride-th frame, images at ``image_size``, the training size): the 2D+3D path, scored per point, not
    through a fused voxel map."""
    reports = []
    for scene in tqdm(scenes, desc=f"evaluate ({mode or model.cfg.inference.mode})", unit="scene"):
        cam = scene.frames[0].camera
        factor = 1.0 if image_size is None else image_scale(cam.width, cam.height, image_size)
        pred = model.predict(scene, split.evaluated, mode=mode, frame_stride=frame_stride, image_scale=factor)
        pred_ids = name_mapping(split.evaluated, scene.label_names)[pred.labels]
        reports.append(evaluate_labels(scene.labels, pred_ids, scene.label_names, split))
    return combine_reports(reports)


def train_main(args) -> int:
    """``ov3dseg train CONFIG`` for an XMask3D config (the options of commands/train.py)."""
    from ov3dseg_core.eval.report import markdown_table, write_report
    from ov3dseg_core.training.checkpoint import export_half
    from ov3dseg_core.training.scenes import training_scenes, validation_scenes

    cfg = load_train_config(args.config)
    data = dataclasses.replace(cfg.data, **{k: v for k, v in (("sim_scenes", args.sim_scenes),
                                                              ("val_scenes", args.val_scenes)) if v is not None})
    train = cfg.train if args.max_steps is None else dataclasses.replace(cfg.train, max_steps=args.max_steps)
    cfg = dataclasses.replace(cfg, data=data, train=train, out_dir=str(args.out or cfg.out_dir))
    torch.manual_seed(cfg.train.seed)
    try:
        model = initial_xmask3d(cfg.model, args.init)
    except (CheckpointError, OSError) as exc:
        print(f"ov3dseg train: --init: {exc}", file=sys.stderr)
        return 2
    result = fit(model, training_scenes(cfg.data), cfg, resume=not args.no_resume)
    print(f"checkpoint: {result.checkpoint} (step {result.step})")
    if args.export:
        print(f"exported float16 checkpoint: {export_half(result.checkpoint, args.export)}")
    if not args.no_eval and cfg.data.val_scenes and int(os.environ.get("RANK", "0")) == 0:
        report = evaluate_views(load_xmask3d(result.checkpoint), validation_scenes(cfg.data),
                                model_split(model),
                                image_size=cfg.views.image_size, frame_stride=cfg.views.frame_stride)
        write_report(report, Path(cfg.out_dir) / "eval")
        print(markdown_table(report))
    return 0


def model_split(model: XMask3D) -> Split:
    """The model's split: its config's named split, else its base / novel class lists."""
    if model.cfg.split:
        return load_split(model.cfg.split)
    return Split(name="model", dataset="", classes=(*model.base_classes, *model.novel_classes),
                 base=tuple(model.base_classes), novel=tuple(model.novel_classes))
