"""Open-vocabulary 3D instance evaluation of Mosaic3D's decoder (Tab. 2 protocol, 3D only) on fused scenes.

Each scene is fused into a voxel map like the mapper's (``map_windows.cached_fused_scene``); ground-truth
instances are the voxels' majority instance ids, with the majority class of their voxels. Predicted objects
(``voxel_objects``) are labelled by their embedding's nearest class text among the evaluated classes. The metrics
(mAP, AP50, AP25, base / novel, class-agnostic AP; stuff classes left out) are ``eval.instances``'s, which also
scores the live map's instance layer (``ov3dseg eval BAG --model``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ov3dseg_core.eval.instances import SceneInstances, instance_metrics
from ov3dseg_core.eval.splits import Split
from ov3dseg_core.models.methods.mosaic3d.data_engine import proposal_masks
from ov3dseg_core.models.methods.mosaic3d.model import Mosaic3D, voxel_objects
from ov3dseg_core.training.map_windows import FusedScene, _majority, cached_fused_scene


def scene_instances(scene: FusedScene, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth instance masks (G, V) bool of a fused scene and their class index into ``classes`` (G,);
    instances whose majority class is not in ``classes`` are dropped."""
    ids = np.where(scene.instances >= 0, scene.instances, -1)
    _, local = np.unique(ids, return_inverse=True)
    local = np.where(ids >= 0, local - int((ids < 0).any()), -1)
    masks = proposal_masks(local)
    inside = local >= 0
    label = _majority(local[inside], scene.labels[inside], len(masks))
    lookup = {name: i for i, name in enumerate(classes)}
    cls = np.array([lookup.get(scene.label_names[c], -1) if c >= 0 else -1 for c in label], dtype=np.int64)
    return masks[cls >= 0], cls[cls >= 0]


def evaluate_instances(model: Mosaic3D, text: torch.Tensor, classes: Sequence[str], scenes: Sequence[FusedScene],
                       split: Split | None = None, score_threshold: float = 0.05) -> dict:
    """``eval.instances.instance_metrics`` of the decoder's objects on ``scenes`` plus seconds per scene; text
    (C, D) the unit embeddings of ``classes``."""
    results, seconds = [], []
    for scene in scenes:
        t0 = time.perf_counter()
        objects = voxel_objects(model, scene.keys, scene.positions, scene.colors, score_threshold)
        seconds.append(time.perf_counter() - t0)
        label = (objects.embeddings @ text.to(objects.embeddings).t()).argmax(1).cpu().numpy()
        results.append(SceneInstances(objects.masks.cpu().numpy(), objects.scores.cpu().numpy(), label,
                                      *scene_instances(scene, classes)))
    return {**instance_metrics(results, classes, split),
            "seconds_per_scene": float(np.mean(seconds)) if seconds else float("nan")}


def instance_report(segmenter, scenes: Sequence, split: Split, voxel_size: float, cache_dir: str | Path,
                    out_dir: str | Path) -> dict:
    """``evaluate_instances`` of a MapSegmenter holding a Mosaic3D on dataset scenes (fused and cached under
    cache_dir, like the training scenes), over the split's evaluated classes; writes OUT/instances.json."""
    fused = [cached_fused_scene(s, voxel_size, Path(cache_dir) / "fused") for s in scenes]
    report = evaluate_instances(segmenter.model, segmenter.embed(split.evaluated), split.evaluated, fused, split)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "instances.json").write_text(json.dumps(report, indent=2))
    return report
