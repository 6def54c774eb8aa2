"""``ov3dseg demo [--out DIR]``: the end-to-end open-vocabulary demo, the README's main job.

1. simulate a held-out scene (seed and room never used in training) as a ROS 2 bag, unless it is already there;
2. replay it through the live node graph with the model (``--model``: the embedded default, another 3D
   checkpoint, or an XMask3D checkpoint whose 2D branch runs on key frames) writing per-voxel features;
3. ask /query for a few categories, including ones the model never saw labelled (its split's novel classes);
4. evaluate the map against the bag's ground truth (DIR/report.json: split, base_miou, novel_miou, hiou, ...,
   and "model": {"name", "kind", "stages": {"2d", "3d"}});
5. render the semantic map and each query result to PNG.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DEMO_SEED = 900_001
"""A scene seed outside the embedded default's training, validation and held-out ranges (set in
ov3dseg_core/configs/ov3d_default.yaml, its ``data`` section, and checked in test/ros/test_demo_seed.py)."""
DEFAULT_QUERIES = ("chair", "table", "sofa", "couch", "bookshelf", "desk")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    parser.add_argument("--model", default="default",
                        help="model checkpoint (3D or XMask3D) or 'default' (the embedded default)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="scene seed")
    parser.add_argument("--room-type", default="living_room", help="room type of the simulated scene")
    parser.add_argument("--frames", type=int, default=24, help="camera frames in the scene")
    parser.add_argument("--query", action="append", dest="queries", help="query text (repeatable)")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="query relevancy threshold in [0, 1]; 0 (default) = the model's calibrated default")


def main(args: argparse.Namespace) -> int:
    from ov3dseg_core.commands.eval import read_bag_ground_truth
    from ov3dseg_core.eval.report import markdown_model, markdown_table, model_entry, write_report
    from ov3dseg_core.eval.splits import load_split
    from ov3dseg_core.mapping.render import render_query, render_semantic_map
    from ov3dseg_core.mapping.voxel_map import VoxelMap
    from ov3dseg_core.models.map_segmenter import resolve_checkpoint
    from ov3dseg_core.training.checkpoint import read_metadata, split_name
    from ov3dseg_core.training.evaluation import evaluate_features
    from ov3dseg_ros.replay import replay_bag

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_checkpoint(args.model)
    split = load_split(split_name(read_metadata(checkpoint)["config"]))
    queries = args.queries or list(DEFAULT_QUERIES)

    bag = out / f"scene_{args.seed}_{args.room_type}_f{args.frames}.mcap"
    if not (bag / "metadata.yaml").exists():
        from ov3dseg_core.sim.export import write_bag
        from ov3dseg_core.sim.world import SimConfig, generate_scene

        print(f"[1/5] simulating held-out scene {args.seed} ({args.room_type}, {args.frames} frames) -> {bag}")
        scene = generate_scene(args.seed, args.room_type, config=SimConfig(frames=args.frames, use_lidar=False),
                               progress=True)
        write_bag(scene, bag, lidar=False, progress=True)
    else:
        print(f"[1/5] reusing {bag}")

    print(f"[2/5] replaying through the node graph with model {checkpoint.name} (split {split.name}: novel "
          f"{', '.join(split.novel)})")
    params = {"model": str(checkpoint), "vocabulary": list(split.evaluated), "model_rate_hz": 0.0,
              "model_window_radius": 8.0,
              "lidar_topics": []}
    result = replay_bag(bag, params=params, deterministic=True, save_map=str(out / "map.safetensors"),
                        queries=queries, query_threshold=args.threshold)
    model = model_entry(str(checkpoint), result.model.kind, result.model_passes)
    print(f"      {result.frames_integrated}/{result.frames_published} frames integrated in {result.wall_s:.1f} s;"
          f"{markdown_model(model).rstrip()}")

    print("[3/5] queries (novel categories were never labelled in training):")
    voxel_map = VoxelMap.load(result.map_path)
    positions = voxel_map.positions()
    answers = {}
    for text, response in result.queries:
        hits = [{"label": h.label, "confidence": round(float(h.confidence), 3), "score": round(float(h.score), 3),
                 "voxels": int(h.num_voxels), "center": [round(v, 2) for v in (h.center.x, h.center.y, h.center.z)],
                 "box_center": [round(v, 2) for v in (h.box_center.x, h.box_center.y, h.box_center.z)],
                 "size": [round(h.size.x, 2), round(h.size.y, 2), round(h.size.z, 2)]} for h in response.hits]
        answers[text] = {"success": response.success, "found": response.found, "message": response.message,
                         "threshold_used": round(float(response.threshold_used), 3),
                         "max_score": round(float(response.max_score), 3), "objects": hits}
        print(f"      {response.message}{' [novel class]' if text in split.novel else ''}")
        cloud = _cloud_points(response.cloud)
        render_query(out / f"query_{text.replace(' ', '_')}.png", positions, cloud[:, :3], cloud[:, 3],
                     [(np.array(h["box_center"][:2]), np.array(h["size"][:2])) for h in hits], text)

    print("[4/5] evaluating the map against the scene's ground truth")
    points, labels, names, _ = read_bag_ground_truth(bag)
    stage = result.model  # the node's model stage: its text space labels the map
    report = evaluate_features(stage, voxel_map, points, labels, names, split)
    write_report(report, out)
    summary = json.loads((out / "report.json").read_text())
    summary.update(model=model, scene_seed=args.seed, room_type=args.room_type, queries=answers)
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    print(markdown_table(report))

    print("[5/5] rendering")
    voxel_labels, _ = stage.classify(voxel_map.features(), split.evaluated)
    voxel_labels = np.where(voxel_map.feature_weights() > 0, voxel_labels, -1)
    render_semantic_map(out / "semantic_map.png", positions, voxel_map.colors(), voxel_labels, split.evaluated,
                        title=f"{args.room_type} (seed {args.seed}), model {checkpoint.name}", novel=split.novel)
    print(f"      {out}/semantic_map.png, {out}/query_*.png, {out}/report.json")
    return 0


def _cloud_points(msg) -> np.ndarray:
    """(K, 4) x, y, z, score of a query response cloud."""
    from ov3dseg_core.msgs.pointcloud2 import pointcloud2_to_array

    arr = pointcloud2_to_array(msg)
    if len(arr) == 0:
        return np.zeros((0, 4), np.float32)
    return np.stack([arr["x"], arr["y"], arr["z"], arr["score"]], axis=1).astype(np.float32)
