"""``ov3dseg calibrate CHECKPOINT [--seeds A-B] [--fit-margin] [--out FILE] [--min-voxels N] [--frames K]
[--cache-dir DIR]``

Calibrates the decisions a model's answers rest on, on simulated validation scenes (default seeds 50000-50023,
generated once and cached in --cache-dir), and rewrites the checkpoint atomically with them in its metadata (or
writes a calibrated copy to --out):

- with ``--fit-margin``, ``extra["labelled_margin"]`` = {margin, calibrated_on, validation: [{margin, base_miou,
  novel_miou, hiou}, ...]}: the cosine taken off the model's labelled classes when voxels are labelled
  (ov3dseg_core.eval.label_calibration; without it a stored margin is kept, none means 0);
- ``extra["query"]`` = {threshold, floor, calibrated_on, min_voxels, voxel_size, objective, validation:
  {present_recall, absent_false_alarm, top1_precision}, ...}: the /query decision (ov3dseg_core.mapping.query).

CHECKPOINT may be ``default`` (the embedded default) or any checkpoint the node runs: the scene's features come
from its semantic stage (``models.semantic_stage``) as in the node, so an XMask3D checkpoint sees the scene's key
frames (its ``KeyFramePolicy``) in its 2D branch; ``--fit-margin`` needs a 3D-only model. The mapping node,
``ov3dseg evaluate``, ``ov3dseg eval`` and ``ov3dseg demo`` read both from the checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ov3dseg_core.eval.query_calibration import QUERY_KEY, VALIDATION_SEEDS, calibration_entry, class_scores, fit_calibration
from ov3dseg_core.mapping.query import (CANONICAL_NEGATIVES, DEFAULT_MIN_VOXELS, RELEVANCY_TEMPERATURE,
                                        SYNONYM_COSINE)


def parse_seeds(text: str) -> list[int]:
    """'50000-50007' (inclusive) or '50000,50003,50005' -> seeds; ValueError otherwise."""
    if "-" in text:
        first, last = (int(s) for s in text.split("-", 1))
        if last < first:
            raise ValueError(f"seed range {text!r} is empty")
        return list(range(first, last + 1))
    return [int(s) for s in text.split(",")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="model checkpoint (.safetensors) or 'default' (the embedded default)")
    parser.add_argument("--seeds", default=f"{VALIDATION_SEEDS[0]}-{VALIDATION_SEEDS[-1]}",
                        help="validation scene seeds, A-B or A,B,C (default %(default)s; never training or "
                             "held-out seeds)")
    parser.add_argument("--fit-margin", action="store_true",
                        help="also fit the labelled-class margin for the best validation hIoU (calibrated stacking)")
    parser.add_argument("--out", type=Path, help="write the calibrated checkpoint here instead of in place")
    parser.add_argument("--min-voxels", type=int, default=DEFAULT_MIN_VOXELS,
                        help="smallest object in voxels, as the node's query_min_voxels (default %(default)s)")
    parser.add_argument("--voxel-size", type=float, default=0.05, help="map voxel size in metres (default 0.05)")
    parser.add_argument("--frames", type=int, default=16, help="camera frames per simulated scene (default 16)")
    parser.add_argument("--cache-dir", type=Path, default=Path("out/sim_cache"), help="simulated scene cache")


def main(args: argparse.Namespace) -> int:
    from ov3dseg_core.data.readers import open_scene
    from ov3dseg_core.eval.label_calibration import fit_labelled_margin, scene_cosines
    from ov3dseg_core.eval.splits import load_split
    from ov3dseg_core.models.map_segmenter import LABELLED_MARGIN_KEY, resolve_checkpoint
    from ov3dseg_core.models.semantic_stage import KeyFramePolicy, load_semantic_stage
    from ov3dseg_core.training.checkpoint import read_metadata, split_name, update_extra
    from ov3dseg_core.training.evaluation import fuse_scene
    from ov3dseg_core.training.scenes import simulated_scene_dir

    try:
        seeds = parse_seeds(args.seeds)
        checkpoint = resolve_checkpoint(args.checkpoint)
        split = load_split(split_name(read_metadata(checkpoint)["config"]))
        stage = load_semantic_stage(checkpoint, policy=KeyFramePolicy(max_pending=args.frames))
    except (OSError, ValueError, KeyError) as exc:
        print(f"ov3dseg calibrate: {exc}", file=sys.stderr)
        return 2
    if args.min_voxels < 1:
        print("ov3dseg calibrate: --min-voxels must be >= 1", file=sys.stderr)
        return 2
    if args.fit_margin and stage.kind != "3d":
        print(f"ov3dseg calibrate: --fit-margin needs a 3D-only model; {checkpoint.name} is {stage.kind}",
              file=sys.stderr)
        return 2
    scores, cosines = [], []  # query cosines per class; label cosines per scene (--fit-margin)
    for seed in tqdm(seeds, desc="validation scenes", unit="scene"):
        scene = open_scene(simulated_scene_dir(seed, args.frames, args.cache_dir))
        voxel_map = fuse_scene(scene, args.voxel_size, stage.feature_dim)
        for frame in scene.frames:  # key frames for a 2D+3D stage (the 3D kind keeps none)
            stage.offer_frame(frame)
        stage.update(voxel_map)
        scores += class_scores(stage, voxel_map, scene.points, scene.labels, scene.label_names, split.evaluated)
        if args.fit_margin:
            cosines.append(scene_cosines(stage.segmenter, voxel_map, scene.points, scene.labels, scene.label_names,
                                         split.evaluated))
    source = f"sim seeds {seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else \
        f"sim seeds {','.join(map(str, seeds))}"
    source = f"{source} ({len(seeds)} scenes)"
    calibration, summary = fit_calibration(scores, args.min_voxels, source)
    details = {"min_voxels": args.min_voxels, "voxel_size": args.voxel_size, "frames": args.frames,
               "classes": list(split.evaluated), "negatives": [*CANONICAL_NEGATIVES, "<model vocabulary>"],
               "synonym_cosine": SYNONYM_COSINE, "temperature": RELEVANCY_TEMPERATURE,
               "objective": "max present_recall - absent_false_alarm", "validation": summary}
    entries = {QUERY_KEY: calibration_entry(calibration, details)}
    if args.fit_margin:
        margin, table = fit_labelled_margin(cosines, split, stage.vocabulary)
        entries[LABELLED_MARGIN_KEY] = {"margin": margin, "calibrated_on": source, "objective": "max hIoU",
                                        "validation": table}
        chosen = next(row for row in table if row["margin"] == margin)
        percents = " / ".join("n/a" if chosen[k] is None else f"{100 * chosen[k]:.1f}"
                              for k in ("base_miou", "novel_miou", "hiou"))
        print(f"labelled-class margin of {checkpoint.name}: {margin:g} (validation base / novel / hIoU {percents})")
    path = update_extra(checkpoint, entries, args.out)
    print(f"query calibration of {checkpoint.name} on {calibration.source}: relevancy threshold "
          f"{calibration.threshold:g}, cosine floor {calibration.floor:g}")
    print("validation: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in summary.items()))
    print(f"wrote {path}")
    return 0
