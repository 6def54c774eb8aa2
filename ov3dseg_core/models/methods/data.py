"""Training data of the distillation methods: fused training scenes with 2D teacher features on their voxels.

Per training scene, once (cached as .npz beside the fused scenes):

1. the scene's frames go through the 2D teachers: the dense teacher (LSeg-like) and the mask teacher (SEEM-like)
   whose masks are captioned (TAP-like), the caption nouns replaced by the mask labels, encoded and painted
   (``teachers.alignment``); nothing else about the frames is read;
2. both per-pixel outputs are fused onto the fused map's voxel positions over the frames (``multiview``, depth
   test sigma = depth_rel_tol * D, frame stride): F_L, F_S (V, D) and their view counts;
3. superpoints of the voxels (``superpoints``, normals only);
4. class-agnostic instance proposals (GeoGuide's Mask3D input): the ground-truth object instances of the voxels
   snapped to superpoints (each superpoint joins the instance most of its voxels belong to), a tenth of them
   dropped (missed proposals). No class information is kept.

The teachers' features are then fused into the distillation target (``teachers.fusion``) with the capability
vectors. Windows are cut like the default model's (``map_windows``); no ground-truth class label reaches a loss.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ov3dseg_core.atomic_write import atomic_path
from ov3dseg_core.data.frames import Scene
from ov3dseg_core.models.methods.base import TeacherConfig
from ov3dseg_core.models.multiview import fuse_multiview
from ov3dseg_core.models.superpoints import SuperpointConfig, voxel_superpoints
from ov3dseg_core.models.teachers.alignment import AlignedMaskTeacher
from ov3dseg_core.models.voxel_inputs import grid_coordinates
from ov3dseg_core.registry import REGISTRY
from ov3dseg_core.training.map_windows import FusedScene, MapWindowConfig, MapWindowDataset, _majority

TEACHER_FORMAT = 2
"""Version of the cached teacher-feature files; bump it when their content changes."""


def build_teachers(cfg: TeacherConfig, label_names: Sequence[str], embed: Callable[[list[str]], torch.Tensor],
                   seed: int) -> dict[str, Callable]:
    """{"dense": (index, frame) -> PixelFeatures, "mask": the aligned mask teacher} for one scene."""
    common = {"label_names": list(label_names), "seed": seed}
    dense = REGISTRY.build("teacher", cfg.dense, embed=embed, **common)
    mask = AlignedMaskTeacher(REGISTRY.build("teacher", cfg.mask, **common),
                              REGISTRY.build("teacher", cfg.captioner, **common), embed, cfg.mask_stride)
    return {"dense": dense, "mask": mask}


def instance_proposals(instances: np.ndarray, superpoint: np.ndarray, rng: np.random.Generator,
                       drop_prob: float = 0.1, min_voxels: int = 10) -> np.ndarray:
    """(V,) int64 class-agnostic proposal id per voxel (-1 none): instances (V,) snapped to superpoints (V,)."""
    snapped = _majority(superpoint, instances, int(superpoint.max()) + 1 if len(superpoint) else 0)[superpoint]
    ids, inverse, sizes = np.unique(snapped, return_inverse=True, return_counts=True)
    keep = (ids >= 0) & (sizes >= min_voxels) & (rng.random(len(ids)) >= drop_prob)
    return np.where(keep[inverse], inverse, -1).astype(np.int64)


def teacher_voxel_features(scene: Scene, fused: FusedScene, cfg: TeacherConfig,
                           embed: Callable[[list[str]], torch.Tensor], cache_dir: str | Path,
                           superpoints: SuperpointConfig, seed: int) -> dict[str, np.ndarray]:
    """Teacher features (float16), view counts, superpoints (on normals) and proposals of a fused scene's voxels,
    cached."""
    tag = json.dumps([fused.name, len(fused.keys), vars(cfg), vars(superpoints), seed, TEACHER_FORMAT],
                     sort_keys=True, default=str)
    path = Path(cache_dir) / f"teachers_{Path(fused.name).name}_{hashlib.sha1(tag.encode()).hexdigest()[:10]}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    teachers = build_teachers(cfg, scene.label_names, embed, seed)
    out = {}
    for name, teacher in teachers.items():
        feats, count = fuse_multiview(fused.positions, scene.frames, teacher, cfg.frame_stride, cfg.depth_rel_tol)
        out[name], out[f"{name}_count"] = feats.half().numpy(), count.numpy().astype(np.int32)
    out["superpoint"] = voxel_superpoints(fused.keys, fused.positions, **vars(superpoints))
    out["proposal"] = instance_proposals(fused.instances, out["superpoint"], np.random.default_rng(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **out)
    return out


class DistillWindowDataset(MapWindowDataset):
    """Windows of fused scenes with a distillation target per voxel.

    targets[i]: (V_i, D) float16 target of scene i, has_target[i]: (V_i,) bool; superpoints[i], proposals[i]:
    (V_i,) int64 (-1 = no proposal). A sample: coord, grid_coord, feat as the default model gets them, target
    (N, D) float32, has_target (N,), superpoint / proposal (N,) ids local to the window, bank_index (N,) the
    voxel's index over all scenes (TESD's feature bank).
    """

    def __init__(self, scenes: Sequence[FusedScene], targets: Sequence[torch.Tensor],
                 has_target: Sequence[torch.Tensor], superpoints: Sequence[np.ndarray],
                 proposals: Sequence[np.ndarray], config: MapWindowConfig | None = None, seed: int = 0):
        super().__init__(scenes, [], lambda texts: torch.zeros(len(texts), 1), config, seed)
        self.targets, self.has_target = list(targets), list(has_target)
        self.superpoints, self.proposals = list(superpoints), list(proposals)
        self.bank_start = np.cumsum([0] + [len(s.keys) for s in scenes])

    @property
    def bank_size(self) -> int:
        return int(self.bank_start[-1])

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        s = index // self.cfg.samples_per_scene
        scene = self.scenes[s]
        select, points, feats, keys = self._sample(scene, rng)
        rows = torch.from_numpy(select)
        _, superpoint = np.unique(self.superpoints[s][select], return_inverse=True)
        proposal = self.proposals[s][select]
        ids, local = np.unique(proposal, return_inverse=True)
        proposal = np.where(proposal >= 0, local - int((ids < 0).any()), -1)
        return {
            "coord": torch.from_numpy(points),
            "grid_coord": torch.from_numpy(grid_coordinates(keys)),
            "feat": torch.from_numpy(feats),
            "target": self.targets[s][rows].float(),
            "has_target": self.has_target[s][rows],
            "superpoint": torch.from_numpy(superpoint.reshape(-1).astype(np.int64)),
            "proposal": torch.from_numpy(proposal.astype(np.int64)),
            "bank_index": torch.from_numpy(select.astype(np.int64) + int(self.bank_start[s])),
        }


def collate_distill(samples: Sequence[dict], bank_size: int = 0) -> dict:
    """Concatenated samples: per-point tensors stacked, ``offset`` (B,) cumulative counts, superpoint and proposal
    ids shifted to be unique over the batch (``num_superpoints``, ``num_proposals``), ``bank_size``."""
    counts = torch.tensor([len(s["coord"]) for s in samples])
    out = {k: torch.cat([s[k] for s in samples]) for k in ("coord", "grid_coord", "feat", "target", "has_target",
                                                           "bank_index")}
    for key, total in (("superpoint", "num_superpoints"), ("proposal", "num_proposals")):
        shifted, shift = [], 0
        for s in samples:
            ids = s[key]
            shifted.append(torch.where(ids >= 0, ids + shift, ids))
            shift += int(ids.max()) + 1 if len(ids) and int(ids.max()) >= 0 else 0
        out[key], out[total] = torch.cat(shifted), shift
    out.update(offset=torch.cumsum(counts, 0), batch_size=len(samples), bank_size=bank_size)
    return out
