"""``ov3dseg calibrate-query CHECKPOINT [--seeds A-B] [--out FILE] [--min-voxels N] [--frames K] [--cache-dir DIR]``

Calibrates the /query decision of a model (relevancy threshold and cosine floor; ov3dseg_core.mapping.query) on
simulated validation scenes (default seeds 50000-50007, generated once and cached in --cache-dir) and rewrites the
checkpoint atomically with the result in its metadata, ``extra["query"]`` = {threshold, floor, calibrated_on,
min_voxels, voxel_size, objective, validation: {present_recall, absent_false_alarm, top1_precision}, ...}, or writes
a calibrated copy to --out. CHECKPOINT may be ``default`` (the embedded default). The mapping node, ``ov3dseg
eval`` and ``ov3dseg demo`` read the calibration from the checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ov3dseg_core.eval.query_calibration import VALIDATION_SEEDS, class_scores, fit_calibration, write_calibration
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
    parser.add_argument("--out", type=Path, help="write the calibrated checkpoint here instead of in place")
    parser.add_argument("--min-voxels", type=int, default=DEFAULT_MIN_VOXELS,
                        help="smallest object in voxels, as the node's query_min_voxels (default %(default)s)")
    parser.add_argument("--voxel-size", type=float, default=0.05, help="map voxel size in metres (default 0.05)")
    parser.add_argument("--frames", type=int, default=16, help="camera frames per simulated scene (default 16)")
    parser.add_argument("--cache-dir", type=Path, default=Path("out/sim_cache"), help="simulated scene cache")


def main(args: argparse.Namespace) -> int:
    from ov3dseg_core.data.readers import open_scene
    from ov3dseg_core.eval.splits import load_split
    from ov3dseg_core.models.map_segmenter import MapSegmenter, resolve_checkpoint
    from ov3dseg_core.training.checkpoint import read_metadata
    from ov3dseg_core.training.evaluation import fuse_scene
    from ov3dseg_core.training.scenes import simulated_scene_dir

    try:
        seeds = parse_seeds(args.seeds)
        checkpoint = resolve_checkpoint(args.checkpoint)
        split = load_split(read_metadata(checkpoint)["config"]["split"])
        segmenter = MapSegmenter.from_checkpoint(checkpoint)
    except (OSError, ValueError, KeyError) as exc:
        print(f"ov3dseg calibrate-query: {exc}", file=sys.stderr)
        return 2
    if args.min_voxels < 1:
        print("ov3dseg calibrate-query: --min-voxels must be >= 1", file=sys.stderr)
        return 2
    scores = []
    for seed in tqdm(seeds, desc="validation scenes", unit="scene"):
        scene = open_scene(simulated_scene_dir(seed, args.frames, args.cache_dir))
        voxel_map = fuse_scene(scene, args.voxel_size, segmenter.feature_dim)
        segmenter.update(voxel_map)
        scores += class_scores(segmenter, voxel_map, scene.points, scene.labels, scene.label_names, split.evaluated)
    source = f"sim seeds {seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else \
        f"sim seeds {','.join(map(str, seeds))}"
    calibration, summary = fit_calibration(scores, args.min_voxels, f"{source} ({len(seeds)} scenes)")
    details = {"min_voxels": args.min_voxels, "voxel_size": args.voxel_size, "frames": args.frames,
               "classes": list(split.evaluated), "negatives": [*CANONICAL_NEGATIVES, "<model vocabulary>"],
               "synonym_cosine": SYNONYM_COSINE, "temperature": RELEVANCY_TEMPERATURE,
               "objective": "max present_recall - absent_false_alarm", "validation": summary}
    path = write_calibration(checkpoint, calibration, details, args.out)
    print(f"query calibration of {checkpoint.name} on {calibration.source}: relevancy threshold "
          f"{calibration.threshold:g}, cosine floor {calibration.floor:g}")
    print("validation: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in summary.items()))
    print(f"wrote {path}")
    return 0
