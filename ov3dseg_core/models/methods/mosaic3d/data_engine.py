"""Mosaic3D's data engine (Sec. 3.1, Algorithm 1): 3D mask-caption pairs from posed RGB-D frames.

Per frame (every ``frame_stride``-th), a pipeline of plug-ins with the paper's interfaces:

1. ``Tagger`` (RAM++): image -> open-set tags;
2. ``BoxDetector`` (Grounding-DINO): image, tags -> boxes with scores (box score >= 0.25, NMS IoU 0.5, boxes over
   95% of the image dropped, as in the paper);
3. ``BoxSegmenter`` (SAM2): image, boxes -> one mask per box; a ``teachers.base.MaskTeacher`` (SEEM) adds the
   "stuff" masks (wall, floor);
4. ``teachers.base.Captioner`` (Osprey): image, masks -> one short phrase per mask;
5. Eq. 2: each 2D mask M_k becomes a binary mask s_k over the 3D points: s_k(p) = 1 iff p projects to (u, v)
   with M_k(u, v) = 1 and |d - D(u, v)| < epsilon (d the point's camera depth, D the frame's depth map).

Per scene, Algorithm 1 then merges the captions into class-agnostic 3D masks (Segment3D's role; here the
``methods.data.instance_proposals`` stand-in): each s_k goes to the 3D mask of highest IoU if that IoU exceeds
``iou_threshold``. The result is cached per scene (.npz) and summarised like the paper's Tab. A1.

The stand-ins (``Sim*``, REGISTRY groups "tagger", "box_detector", "box_segmenter", "teacher") read a rendered
frame's instance and class images and answer with a real model's habits: missed tags and objects, look-alike
tags grounded on the wrong object, jittered boxes, masks dilated, eroded, cut or merged with a neighbour, free-form
captions (``training.captions``). No class label leaves the engine except as words inside captions; novel
classes reach training only that way. Real models plug in by registering a type in the same group.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from ov3dseg_core.atomic_write import atomic_path
from ov3dseg_core.data.frames import RGBDFrame, Scene
from ov3dseg_core.geometry.camera import PinholeCamera, project_points
from ov3dseg_core.eval.instances import mask_iou
from ov3dseg_core.geometry.transforms import invert_transform, transform_points
from ov3dseg_core.models.methods.data import instance_proposals
from ov3dseg_core.models.superpoints import SuperpointConfig, voxel_superpoints
from ov3dseg_core.models.teachers.base import Captioner, MaskSet, MaskTeacher
from ov3dseg_core.models.teachers.simulated import frame_objects
from ov3dseg_core.registry import REGISTRY
from ov3dseg_core.training.captions import LOOK_ALIKES, SYNONYMS
from ov3dseg_core.training.map_windows import FusedScene

ENGINE_FORMAT = 1
"""Version of the cached mask-caption files; bump it when their content changes."""

STUFF = ("wall", "floor", "ceiling")
"""Classes the stuff segmenter (SEEM) covers; Grounding-DINO + SAM2 cover the things."""


@dataclass
class Boxes:
    """boxes: (B, 4) float32 pixel corners x0, y0, x1, y1 (inclusive); scores: (B,) float32; phrases: B tags."""

    boxes: np.ndarray
    scores: np.ndarray
    phrases: list[str]


class Tagger(ABC):
    """RAM++: an image -> the tags of what it shows."""

    @abstractmethod
    def __call__(self, index: int, frame: RGBDFrame) -> list[str]:
        ...


class BoxDetector(ABC):
    """Grounding-DINO: an image and text prompts -> boxes, scores and the phrase each box grounds."""

    @abstractmethod
    def __call__(self, index: int, frame: RGBDFrame, tags: Sequence[str]) -> Boxes:
        ...


class BoxSegmenter(ABC):
    """SAM2 prompted with boxes: an image and boxes (B, 4) -> masks (B, H, W) bool."""

    @abstractmethod
    def __call__(self, index: int, frame: RGBDFrame, boxes: np.ndarray) -> np.ndarray:
        ...


@dataclass
class EngineConfig:
    """tagger / detector / segmenter / stuff / captioner: REGISTRY configs of the plug-ins (groups "tagger",
    "box_detector", "box_segmenter", "teacher", "teacher"); frame_stride: every n-th frame (ScanNet: 20);
    epsilon: Eq. 2 depth tolerance, metres (not stated in the paper); box_threshold / nms_iou / max_box_area:
    Grounding-DINO post-processing; min_mask_points: lifted masks with fewer points are dropped; iou_threshold:
    Algorithm 1's tau (not stated); proposal_drop: share of objects Segment3D's stand-in misses; seed: noise."""

    tagger: dict[str, Any] = field(default_factory=lambda: {"type": "SimTagger"})
    detector: dict[str, Any] = field(default_factory=lambda: {"type": "SimBoxDetector"})
    segmenter: dict[str, Any] = field(default_factory=lambda: {"type": "SimBoxSegmenter"})
    stuff: dict[str, Any] = field(default_factory=lambda: {"type": "SimStuffSegmenter"})
    captioner: dict[str, Any] = field(default_factory=lambda: {"type": "SimCaptioner"})
    frame_stride: int = 2
    epsilon: float = 0.1
    box_threshold: float = 0.25
    nms_iou: float = 0.5
    max_box_area: float = 0.95
    min_mask_points: int = 5
    iou_threshold: float = 0.3
    proposal_drop: float = 0.1
    seed: int = 0


# --- lifting (Eq. 2) and merging (Algorithm 1) ---------------------------------------------------------------


def lift_masks(points: np.ndarray, camera: PinholeCamera, T_world_camera: np.ndarray, depth: np.ndarray,
               masks: np.ndarray, epsilon: float) -> np.ndarray:
    """Eq. 2: binary 3D masks (K, N) bool of 2D masks (K, H, W) bool. points (N, 3) metres, world frame;
    T_world_camera (4, 4); depth (H, W) metres, 0 = invalid. s_k(p) = M_k(u, v) and |d - D(u, v)| < epsilon at the
    pixel (u, v) = round(projection of p), d the point's camera depth."""
    cam = transform_points(invert_transform(T_world_camera), np.asarray(points, dtype=np.float64)).astype(np.float32)
    uv, z, valid = project_points(camera, cam)
    uv = np.where(valid[:, None], uv, 0.0)
    u, v = np.rint(uv[:, 0]).astype(np.int64), np.rint(uv[:, 1]).astype(np.int64)
    d = depth[v, u]
    visible = valid & (d > 0) & (np.abs(z - d) < epsilon)
    return masks[:, v, u] & visible[None]


def merge_captions(masks: np.ndarray, masks3d: np.ndarray, iou_threshold: float) -> list[list[int]]:
    """Algorithm 1: for each lifted mask s_k (rows of masks (K, N) bool), l* = argmax_l IoU(s_k, s_l^3D) over the
    class-agnostic 3D masks (L, N); caption k joins M_{l*} if that IoU > iou_threshold. Returns M_l: the caption
    indices of each 3D mask (L lists, possibly empty)."""
    merged: list[list[int]] = [[] for _ in range(len(masks3d))]
    if len(masks) == 0 or len(masks3d) == 0:
        return merged
    iou = mask_iou(masks, masks3d)
    best = iou.argmax(axis=1)
    for k in np.flatnonzero(iou[np.arange(len(masks)), best] > iou_threshold):
        merged[int(best[k])].append(int(k))
    return merged


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes (B, 4) kept by greedy non-maximum suppression at ``iou``, best score first."""
    area = np.prod(boxes[:, 2:] - boxes[:, :2] + 1, axis=1)
    lo = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    hi = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(hi - lo + 1, 0, None), axis=2)
    overlap = inter / (area[:, None] + area[None] - inter)
    keep: list[int] = []
    for i in np.argsort(-scores):
        if all(overlap[i, j] <= iou for j in keep):
            keep.append(int(i))
    return np.array(keep, dtype=np.int64)


# --- offline stand-ins -----------------------------------------------------------------------------------------


def _instance_boxes(instances: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(O, 4) pixel boxes x0, y0, x1, y1 of the instances ``ids`` (O,) sorted in an (H, W) instance image."""
    ys, xs = np.nonzero(instances >= 0)
    row = np.searchsorted(ids, instances[ys, xs]).clip(0, max(len(ids) - 1, 0))
    hit = ids[row] == instances[ys, xs]
    boxes = np.tile(np.array([np.inf, np.inf, -np.inf, -np.inf]), (len(ids), 1))
    np.minimum.at(boxes[:, 0], row[hit], xs[hit])
    np.minimum.at(boxes[:, 1], row[hit], ys[hit])
    np.maximum.at(boxes[:, 2], row[hit], xs[hit])
    np.maximum.at(boxes[:, 3], row[hit], ys[hit])
    return boxes.astype(np.float32)


class _Sim:
    def __init__(self, label_names: Sequence[str], seed: int = 0, **habits: float):
        self.label_names, self.seed = list(label_names), seed
        self.habits = {**self.HABITS, **habits}

    HABITS: dict[str, float] = {}

    def _rng(self, index: int, salt: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, salt, index))


def _grounds(tag: str, name: str) -> bool:
    """Whether Grounding-DINO would put a box for ``tag`` on an object of class ``name`` (its words or a
    look-alike's)."""
    return tag in SYNONYMS.get(name, [name]) or tag in LOOK_ALIKES.get(name, [])


@REGISTRY.register("tagger", "SimTagger")
class SimTagger(_Sim, Tagger):
    """RAM++-like: a word (synonym) per class in view; classes covering less than ``min_area`` of the image are
    missed at ``small_miss``, others at ``miss``; a look-alike's name instead at ``confuse``."""

    HABITS = {"miss": 0.05, "small_miss": 0.5, "min_area": 0.01, "confuse": 0.1}

    def __call__(self, index: int, frame: RGBDFrame) -> list[str]:
        rng, h = self._rng(index, 11), self.habits
        _, names, areas = frame_objects(frame, self.label_names)
        tags = []
        for name in sorted(set(names)):
            area = sum(a for n, a in zip(names, areas) if n == name) / frame.depth.size
            if rng.random() < (h["small_miss"] if area < h["min_area"] else h["miss"]):
                continue
            words = LOOK_ALIKES.get(name) if rng.random() < h["confuse"] and name in LOOK_ALIKES else None
            words = words or SYNONYMS.get(name, [name])
            tags.append(words[int(rng.integers(len(words)))])
        return sorted(set(tags))


@REGISTRY.register("box_detector", "SimBoxDetector")
class SimBoxDetector(_Sim, BoxDetector):
    """Grounding-DINO-like: a box per object whose class a tag names (or looks like), corners jittered by up to
    ``jitter`` of the box size, a score in [score_low, 1) that is lower for small objects."""

    HABITS = {"jitter": 0.1, "score_low": 0.1}

    def __call__(self, index: int, frame: RGBDFrame, tags: Sequence[str]) -> Boxes:
        rng, h = self._rng(index, 12), self.habits
        ids, names, areas = frame_objects(frame, self.label_names)
        pairs = [(i, tag) for i, name in enumerate(names) for tag in tags if _grounds(tag, name)]
        if not pairs:
            return Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])
        rows = np.array([i for i, _ in pairs])
        boxes = _instance_boxes(frame.instances, ids)[rows]
        size = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(2, axis=1)
        boxes = boxes + h["jitter"] * size * rng.uniform(-1, 1, boxes.shape).astype(np.float32)
        boxes = np.clip(boxes, 0, [frame.camera.width - 1, frame.camera.height - 1] * 2).astype(np.float32)
        area = np.sqrt(areas[rows] / frame.depth.size)
        scores = np.clip(h["score_low"] + rng.uniform(0, 1, len(rows)) * (0.4 + area), 0, 0.99)
        return Boxes(boxes, scores.astype(np.float32), [t for _, t in pairs])


@REGISTRY.register("box_segmenter", "SimBoxSegmenter")
class SimBoxSegmenter(_Sim, BoxSegmenter):
    """SAM2-like: the mask of the instance covering most of each box, merged with the second one at ``merge``,
    cut by a random line at ``partial``, dilated or eroded by up to ``boundary_px`` pixels."""

    HABITS = {"merge": 0.1, "partial": 0.1, "boundary_px": 3}

    def __call__(self, index: int, frame: RGBDFrame, boxes: np.ndarray) -> np.ndarray:
        rng, h = self._rng(index, 13), self.habits
        inst = frame.instances
        masks = np.zeros((len(boxes), *inst.shape), dtype=bool)
        for b, (x0, y0, x1, y1) in enumerate(np.rint(boxes).astype(np.int64)):  # one step per box
            crop = inst[y0:y1 + 1, x0:x1 + 1]
            ids, counts = np.unique(crop[crop >= 0], return_counts=True)
            if len(ids) == 0:
                continue
            order = np.argsort(-counts)
            chosen = ids[order[:2]] if len(ids) > 1 and rng.random() < h["merge"] else ids[order[:1]]
            mask = np.zeros_like(masks[b])
            mask[y0:y1 + 1, x0:x1 + 1] = np.isin(crop, chosen)
            if rng.random() < h["partial"]:
                yy, xx = np.nonzero(mask)
                normal = rng.normal(size=2)
                cut = (np.stack([xx, yy], 1) - [xx.mean(), yy.mean()]) @ normal < 0
                mask[yy[cut], xx[cut]] = False
            r = int(rng.integers(-h["boundary_px"], h["boundary_px"] + 1))
            if r:
                mask = (ndimage.binary_dilation if r > 0 else ndimage.binary_erosion)(mask, iterations=abs(r))
            masks[b] = mask
        return masks


@REGISTRY.register("teacher", "SimStuffSegmenter")
class SimStuffSegmenter(_Sim, MaskTeacher):
    """SEEM-like for stuff: one mask per stuff class in view (all its pixels, like a panoptic stuff segment),
    eroded by ``erode_px``, missed at ``miss``, labelled with its plain name."""

    HABITS = {"miss": 0.1, "erode_px": 2, "min_area": 0.01}

    def __call__(self, index: int, frame: RGBDFrame) -> MaskSet:
        rng, h = self._rng(index, 14), self.habits
        masks, labels = [], []
        for c, name in enumerate(self.label_names):
            if name not in STUFF:
                continue
            mask = ndimage.binary_erosion(frame.labels == c, iterations=int(h["erode_px"]))
            if mask.mean() >= h["min_area"] and rng.random() >= h["miss"]:
                masks.append(mask)
                labels.append(name)
        return MaskSet(np.stack(masks) if masks else np.zeros((0, *frame.depth.shape), bool), labels)


# --- the engine --------------------------------------------------------------------------------------------------


class DataEngine:
    """The plug-ins of ``EngineConfig`` for one scene's label names (what the stand-ins read; real models ignore
    them)."""

    def __init__(self, cfg: EngineConfig, label_names: Sequence[str], seed: int):
        common = {"label_names": list(label_names), "seed": seed}
        self.cfg = cfg
        self.tagger = REGISTRY.build("tagger", cfg.tagger, **common)
        self.detector = REGISTRY.build("box_detector", cfg.detector, **common)
        self.segmenter = REGISTRY.build("box_segmenter", cfg.segmenter, **common)
        self.stuff = REGISTRY.build("teacher", cfg.stuff, **common)
        self.captioner: Captioner = REGISTRY.build("teacher", cfg.captioner, **common)

    def frame_masks(self, index: int, frame: RGBDFrame) -> tuple[np.ndarray, int]:
        """2D masks (M, H, W) bool of one frame (things first) and the number of thing masks."""
        boxes = self.detector(index, frame, self.tagger(index, frame))
        area = np.prod(boxes.boxes[:, 2:] - boxes.boxes[:, :2] + 1, axis=1) / frame.depth.size
        ok = np.flatnonzero((boxes.scores >= self.cfg.box_threshold) & (area <= self.cfg.max_box_area))
        keep = ok[box_nms(boxes.boxes[ok], boxes.scores[ok], self.cfg.nms_iou)] if len(ok) else ok
        things = self.segmenter(index, frame, boxes.boxes[keep])
        things = things[things.any(axis=(1, 2))]
        return np.concatenate([things, self.stuff(index, frame).masks]), len(things)

    def scene_pairs(self, scene: Scene, points: np.ndarray) -> dict[str, Any]:
        """Lifted mask-caption pairs of a scene over ``points`` (N, 3): mask_point / mask_id (P,) pairs, captions
        (K,), frame (K,) source frame, thing (K,) bool, frames used."""
        point_rows, mask_rows, captions, frames, thing = [], [], [], [], []
        used = 0
        for i in range(0, len(scene.frames), self.cfg.frame_stride):
            frame = scene.frames[i]
            if frame.pose is None:
                continue
            used += 1
            masks, num_things = self.frame_masks(i, frame)
            if len(masks) == 0:
                continue
            lifted = lift_masks(points, frame.camera, frame.pose, frame.depth, masks, self.cfg.epsilon)
            good = np.flatnonzero(lifted.sum(axis=1) >= self.cfg.min_mask_points)
            texts = self.captioner(i, frame, masks[good])
            for k, text in zip(good, texts):
                if not text:
                    continue
                rows = np.flatnonzero(lifted[k])
                point_rows.append(rows)
                mask_rows.append(np.full(len(rows), len(captions)))
                captions.append(text)
                frames.append(i)
                thing.append(k < num_things)
        cat = (lambda a: np.concatenate(a).astype(np.int64)) if captions else (lambda a: np.zeros(0, np.int64))
        return {"mask_point": cat(point_rows), "mask_id": cat(mask_rows), "captions": captions,
                "frame": np.array(frames, np.int64), "thing": np.array(thing, bool), "frames_used": used}


def pair_masks(mask_point: np.ndarray, mask_id: np.ndarray, num_masks: int, num_points: int) -> np.ndarray:
    """Dense (K, N) bool masks from (P,) point / mask pairs."""
    dense = np.zeros((num_masks, num_points), dtype=bool)
    dense[mask_id, mask_point] = True
    return dense


def proposal_masks(proposal: np.ndarray) -> np.ndarray:
    """(L, N) bool masks of proposal ids (N,) in [0, L) (-1 none)."""
    num = int(proposal.max()) + 1 if len(proposal) else 0
    return np.arange(num)[:, None] == proposal[None]


def scene_dataset(scene: Scene, fused: FusedScene, cfg: EngineConfig, superpoints: SuperpointConfig,
                  cache_dir: str | Path, seed: int) -> dict[str, Any]:
    """The mask-caption data of one fused training scene, cached: ``scene_pairs`` over the fused voxel positions,
    Segment3D-like proposals (V,) (``instance_proposals`` on the voxels' ``superpoints``, on normals) and
    Algorithm 1's ``merged``: the caption indices of each proposal."""
    tag = json.dumps([fused.name, len(fused.keys), asdict(cfg), asdict(superpoints), seed, ENGINE_FORMAT],
                     sort_keys=True, default=str)
    path = Path(cache_dir) / f"mosaic3d_{Path(fused.name).name}_{hashlib.sha1(tag.encode()).hexdigest()[:10]}.npz"
    if path.is_file():
        with np.load(path) as data:
            out = {k: data[k] for k in data.files if k != "meta"}
            meta = json.loads(str(data["meta"]))
        return {**out, **meta}
    out = DataEngine(cfg, scene.label_names, seed).scene_pairs(scene, fused.positions)
    superpoint = voxel_superpoints(fused.keys, fused.positions, **asdict(superpoints))
    out["proposal"] = instance_proposals(fused.instances, superpoint, np.random.default_rng(seed), cfg.proposal_drop)
    masks = pair_masks(out["mask_point"], out["mask_id"], len(out["captions"]), len(fused.keys))
    out["merged"] = merge_captions(masks, proposal_masks(out["proposal"]), cfg.iou_threshold)
    meta = {k: out.pop(k) for k in ("captions", "merged", "frames_used")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=json.dumps(meta), **out)
    return {**out, **meta}


def dataset_statistics(data: Sequence[dict[str, Any]], name: str = "simulated") -> dict[str, Any]:
    """Tab. A1-like statistics of scene datasets: scenes, frames, captions, tokens (whitespace words; the paper
    counts tokenizer tokens), plus mask sizes (points) and Algorithm 1's matching."""
    captions = [c for d in data for c in d["captions"]]
    sizes = np.concatenate([np.bincount(d["mask_id"], minlength=len(d["captions"])) for d in data]) \
        if captions else np.zeros(0)
    merged = [m for d in data for m in d["merged"]]
    matched = sum(len(m) for m in merged)
    return {
        "source": name, "scenes": len(data), "frames": int(sum(d["frames_used"] for d in data)),
        "captions": len(captions), "tokens": int(sum(len(c.split()) for c in captions)),
        "thing_masks": int(sum(int(d["thing"].sum()) for d in data)),
        "stuff_masks": int(sum(int((~d["thing"]).sum()) for d in data)),
        "points_per_mask": float(sizes.mean()) if len(sizes) else 0.0,
        "proposals": len(merged), "proposals_with_captions": int(sum(bool(m) for m in merged)),
        "captions_merged": matched, "captions_per_captioned_proposal":
            matched / max(1, sum(bool(m) for m in merged)),
    }


def format_statistics(stats: dict[str, Any]) -> str:
    """One Tab. A1 row plus the extra columns, as a markdown table."""
    keys = list(stats)
    cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in stats.values()]
    return "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| " + " | ".join(cells) + " |"
