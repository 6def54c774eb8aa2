"""Inference settings of an OpenVocab3D checkpoint (the embedded default) on the simulated VALIDATION scenes: the
class-name template and superpoint pooling (none, normals only, normals + colour), one markdown row each.

Every scene is fused once by the live mapper's ``VoxelMap``; each setting runs ``MapSegmenter.update`` over a
fresh copy of that map (the code the node and ``ov3dseg evaluate`` run) and labels every voxel by its nearest
class name. The held-out scenes are never touched: this is how the shipped settings were chosen.

    python benchmarks/ablations/default_inference.py [CHECKPOINT] [--config ov3d_default]
"""
from __future__ import annotations

import argparse
import os
import time

from tqdm import tqdm

from ov3dseg_core.config import load_config
from ov3dseg_core.eval.evaluate import combine_reports
from ov3dseg_core.eval.splits import load_split
from ov3dseg_core.mapping.voxel_map import VoxelMap
from ov3dseg_core.models.map_segmenter import MapSegmenter
from ov3dseg_core.models.superpoints import SuperpointConfig
from ov3dseg_core.training.config import TrainConfig
from ov3dseg_core.training.evaluation import evaluate_features, fuse_scene
from ov3dseg_core.training.scenes import validation_scenes

SETTINGS: dict[str, tuple[str, SuperpointConfig | None]] = {
    "training prompt 'a {} in a scene', per voxel": ("a {} in a scene", None),
    "'a {}', per voxel": ("a {}", None),
    "'a {} in a scene', superpoints (normals)": ("a {} in a scene", SuperpointConfig(color_weight=0.0)),
    "'a {}', superpoints (normals)": ("a {}", SuperpointConfig(color_weight=0.0)),
    "'a {} in a scene', superpoints (normals + colour)": ("a {} in a scene", SuperpointConfig()),
    "'a {}', superpoints (normals + colour)": ("a {}", SuperpointConfig()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default="default")
    parser.add_argument("--config", default="ov3d_default", help="training config: split and validation seeds")
    args = parser.parse_args()
    cfg = load_config(TrainConfig, args.config)
    split = load_split(cfg.split)
    segmenters = {name: MapSegmenter.from_checkpoint(args.checkpoint, template=template, superpoints=superpoints)
                  for name, (template, superpoints) in SETTINGS.items()}
    reports: dict[str, list] = {name: [] for name in SETTINGS}
    load_before, start = os.getloadavg()[0], time.perf_counter()
    feature_dim = next(iter(segmenters.values())).feature_dim
    for scene in tqdm(validation_scenes(cfg.data), desc="validation scenes", unit="scene"):
        fused = fuse_scene(scene, cfg.windows.voxel_size, feature_dim)
        state = fused.state()
        for name, segmenter in segmenters.items():
            voxel_map = VoxelMap.from_state(fused.config, state)
            segmenter.update(voxel_map)
            reports[name].append(evaluate_features(segmenter, voxel_map, scene.points, scene.labels,
                                                   scene.label_names, split))
    print(f"\n{args.checkpoint}, validation seeds {cfg.data.val_seed_start}.."
          f"{cfg.data.val_seed_start + cfg.data.val_scenes - 1}, split {split.name}; "
          f"{time.perf_counter() - start:.0f} s, 1-min load {load_before:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print("| setting | base mIoU | novel mIoU | hIoU | " + " | ".join(split.novel) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(split.novel))
    for name, parts in reports.items():
        m = combine_reports(parts).metrics
        novel = [m.iou[split.evaluated.index(c)] for c in split.novel]
        print(f"| {name} | {100 * m.base_miou:.1f} | {100 * m.novel_miou:.1f} | {100 * m.hiou:.1f} | "
              + " | ".join(f"{100 * v:.1f}" for v in novel) + " |")


if __name__ == "__main__":
    main()
