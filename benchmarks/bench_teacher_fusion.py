"""SAS Tab. 3 (top half) on simulated validation scenes: the 2D teachers' point features alone, projected onto the
fused map and fused by each rule (dense teacher only, mask teacher only, add, linear, capability), labelled by
their nearest class text embedding and scored like the 3D models (base / novel mIoU, hIoU over the scene's points).

    python benchmarks/bench_teacher_fusion.py [CONFIG] [--val-scenes N] [--threads N]
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from ov3dseg_core.config import load_config
from ov3dseg_core.eval.evaluate import combine_reports, evaluate_labels
from ov3dseg_core.eval.matching import match_points_to_voxels
from ov3dseg_core.eval.splits import load_split, name_mapping
from ov3dseg_core.models.methods import method_config
from ov3dseg_core.models.methods.data import teacher_voxel_features
from ov3dseg_core.models.methods.training import teacher_capability
from ov3dseg_core.models.teachers.fusion import FUSION_RULES, fuse_teachers
from ov3dseg_core.models.text import CachedTextEncoder, apply_template, build_text_encoder
from ov3dseg_core.training.config import TrainConfig
from ov3dseg_core.training.map_windows import fused_scenes
from ov3dseg_core.training.scenes import validation_scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="sas_tiny")
    parser.add_argument("--val-scenes", type=int)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(TrainConfig, args.config)
    if args.val_scenes:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_scenes=args.val_scenes))
    split, mcfg = load_split(cfg.split), method_config(cfg.method)
    encoder = CachedTextEncoder(build_text_encoder(mcfg.text_encoder))
    vocabulary = list(mcfg.vocabulary) or list(split.evaluated)
    vocab_text = encoder.encode(apply_template(vocabulary, mcfg.prompt_template)).float()
    scenes = validation_scenes(cfg.data)
    fused = fused_scenes(scenes, cfg.windows, cfg.data.cache_dir)
    cache = Path(cfg.data.cache_dir) / "teachers"
    cap = teacher_capability(mcfg, vocabulary, vocab_text, scenes[0].label_names, encoder.encode, cache)
    capability = torch.from_numpy(np.stack([cap["dense"], cap["mask"]]))
    reports: dict[str, list] = {rule: [] for rule in FUSION_RULES}
    for i, (scene, fs) in enumerate(zip(scenes, fused)):
        t = teacher_voxel_features(scene, fs, mcfg.teachers, encoder.encode, cache, mcfg.superpoints,
                                   mcfg.teachers.seed + 10_000 + i)
        feats = [torch.from_numpy(t["dense"]), torch.from_numpy(t["mask"])]
        seen = [torch.from_numpy(t["dense_count"] > 0), torch.from_numpy(t["mask_count"] > 0)]
        to_scene = name_mapping(vocabulary, scene.label_names)
        for rule in FUSION_RULES:
            target, has = fuse_teachers(rule, feats, seen, vocab_text, capability, mcfg.tau)
            voxel = np.where(has.numpy(), to_scene[(target @ vocab_text.t()).argmax(1).numpy()], -1)
            pred, _ = match_points_to_voxels(scene.points, fs.keys, voxel, cfg.windows.voxel_size)
            reports[rule].append(evaluate_labels(scene.labels, pred, scene.label_names, split))
    print(f"| 2D features ({len(scenes)} validation scenes) | mIoU | base mIoU | novel mIoU | hIoU |")
    print("|---|---|---|---|---|")
    for rule, rs in reports.items():
        m = combine_reports(rs).metrics
        print(f"| {rule} | {100 * m.miou:.1f} | {100 * m.base_miou:.1f} | {100 * m.novel_miou:.1f} | "
              f"{100 * m.hiou:.1f} |")


if __name__ == "__main__":
    main()
