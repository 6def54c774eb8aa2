"""``ov3dseg eval INPUT --out DIR [--split NAME] [--oracle] [--params FILE] [--voxel-size V]``

INPUT is either
- a ROS 2 bag (an ``.mcap`` file, or a rosbag2 folder with ``metadata.yaml``): it is replayed through the real node
  graph (``ov3dseg_ros.replay.replay_bag``, needs rclpy), the saved map is matched against the bag's ground-truth
  cloud (``/ground_truth/points``: PointCloud2 x y z label instance, map frame; ``/ground_truth/label_names``:
  std_msgs/String JSON list); ``--oracle`` feeds the bag's ground-truth label images as the label input;
- or a dataset scene (anything ``ov3dseg_core.data.open_scene`` reads): its frames are fused offline into a
  VoxelMap and matched against the scene's labelled points.
Without ``--oracle`` the labels come from an open-vocabulary model (``--model``, default: the embedded default):
the mapper writes per-voxel features and each voxel takes the class (of the split, else of the ground truth)
whose text embedding is nearest. A bag runs any checkpoint through the node's semantic stage (3D models, or
XMask3D with its 2D branch on key frames; the keyframe_* parameters of --params apply), and report.json gets
"model": {"name": the --model value, "kind": "3d" or "2d+3d", "stages": {"2d": 2D-branch runs (key frames),
"3d": 3D-branch runs}}; a dataset scene takes 3D checkpoints only (XMask3D: ``ov3dseg evaluate``). When the map
holds instances (a model with an instance decoder, Mosaic3D), report.json also gets "instances": mAP, AP50, AP25
(base / novel, class-agnostic) of the map's instances against the ground-truth cloud's instance ids
(``ov3dseg_core.eval.instances.live_instance_report``), also in report.md.

Writes DIR/report.json (keys: miou, macc, fmiou, fmacc, per_class_iou, per_class_acc, num_points, coverage,
voxel_size and, with --split, split, base_miou, novel_miou, hiou), DIR/report.md, DIR/per_class_iou.png,
DIR/confusion.png and the evaluated map DIR/map.safetensors; prints the markdown table.
For a bag, the replayed node is also asked the default /query (threshold 0) for every class name of the split
(else of the ground truth), and report.json gets the query benchmark (ov3dseg_core.eval.query_benchmark):
"query": {"per_class": {class: {present, found, top1_correct, num_objects, score, confidence}}, "present_recall",
"absent_false_alarm", "top1_precision"}, also in report.md.
--params is a mapping-node parameter file (flat, or ``ov3dseg_mapper: ros__parameters: ...``): bags get all of it,
the offline path uses voxel_size, max_voxels, depth_min_range, depth_max_range and depth_stride.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from ov3dseg_core.config import from_dict
from ov3dseg_core.eval.evaluate import EvalReport, evaluate_map
from ov3dseg_core.eval.query_benchmark import class_record, markdown_query, query_report
from ov3dseg_core.eval.instances import markdown_instances
from ov3dseg_core.eval.report import markdown_model, markdown_table, model_entry, write_report
from ov3dseg_core.eval.splits import Split, SplitError, load_split

GT_POINTS_TOPIC = "/ground_truth/points"
GT_LABEL_NAMES_TOPIC = "/ground_truth/label_names"
MAP_FILE = "map.safetensors"


class EvalInputError(ValueError):
    """An input the evaluation cannot use (missing ground truth, no labels, unsupported mode)."""


@dataclass
class OfflineParams:
    """The mapping-node parameters the offline (dataset) path uses; metres."""

    voxel_size: float = 0.05
    max_voxels: int = 5_000_000
    depth_min_range: float = 0.1
    depth_max_range: float = 10.0
    depth_stride: int = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="a bag (.mcap file or rosbag2 folder) or a dataset scene")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the report and plots")
    parser.add_argument("--split", help="base/novel split name (e.g. sim_b15n4, scannet_b15n4) or split YAML path")
    parser.add_argument("--oracle", action="store_true",
                        help="use the ground-truth label images as the label input instead of a model")
    parser.add_argument("--model", default="default",
                        help="model checkpoint (.safetensors: 3D models, or XMask3D with its 2D branch on key frames; "
                             "a bag only) or 'default' (the embedded default); ignored with --oracle")
    parser.add_argument("--params", type=Path, help="mapping-node parameter YAML")
    parser.add_argument("--voxel-size", type=float, help="voxel edge length in metres (overrides --params)")
    parser.add_argument("--frame-stride", type=int, default=1, help="offline: use every n-th frame (default 1)")


def is_bag(path: Path) -> bool:
    """True for an .mcap file or a rosbag2 folder (with metadata.yaml)."""
    return (path.is_file() and path.suffix == ".mcap") or (path.is_dir() and (path / "metadata.yaml").is_file())


def load_params(path: Path | None) -> dict[str, Any]:
    """Flat parameter dict from a YAML file; a ``<node>: ros__parameters:`` wrapper is unwrapped."""
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise EvalInputError(f"{path}: parameters must be a mapping")
    if len(data) == 1:
        (inner,) = data.values()
        if isinstance(inner, dict) and isinstance(inner.get("ros__parameters"), dict):
            data = inner["ros__parameters"]
    return dict(data)


def read_bag_ground_truth(bag_path: Path) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """The latest ground-truth cloud of a bag: (points (N, 3) float32 metres map frame, labels (N,) int32,
    label names, instance ids (N,) int32, -1 where the cloud has none)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import get_typestore

    from ov3dseg_core.data.bag_writer import TYPESTORE_NAME
    from ov3dseg_core.msgs.pointcloud2 import pointcloud2_to_array

    cloud = names = None
    with AnyReader([bag_path], default_typestore=get_typestore(TYPESTORE_NAME)) as reader:
        connections = [c for c in reader.connections if c.topic in (GT_POINTS_TOPIC, GT_LABEL_NAMES_TOPIC)]
        for conn, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == GT_LABEL_NAMES_TOPIC:
                names = json.loads(msg.data)
            else:
                if msg.header.frame_id != "map":
                    raise EvalInputError(f"{bag_path}: {GT_POINTS_TOPIC} is in frame {msg.header.frame_id!r}, "
                                         "expected 'map'")
                cloud = pointcloud2_to_array(msg)
    if cloud is None or names is None:
        raise EvalInputError(f"{bag_path}: no ground truth; the bag needs {GT_POINTS_TOPIC} and {GT_LABEL_NAMES_TOPIC}")
    if "label" not in cloud.dtype.names:
        raise EvalInputError(f"{bag_path}: {GT_POINTS_TOPIC} has no 'label' field (fields: {cloud.dtype.names})")
    points = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=1).astype(np.float32)
    finite = np.isfinite(points).all(axis=1)
    instances = cloud["instance"] if "instance" in cloud.dtype.names else np.full(len(cloud), -1)
    return points[finite], cloud["label"][finite].astype(np.int32), list(names), instances[finite].astype(np.int32)


def evaluate_bag(bag_path: Path, params: dict[str, Any], oracle: bool, split: Split | None, out_dir: Path,
                 model: str = "default") -> tuple[EvalReport, dict[str, Any]]:
    """Replay the bag through the node graph (deterministically), ask the default /query for every class, then
    evaluate the saved map; returns the report and the report.json sections "query" and (with a model) "model"."""
    from ov3dseg_core.mapping.voxel_map import VoxelMap
    from ov3dseg_core.models.map_segmenter import resolve_checkpoint
    try:
        from ov3dseg_ros.params import ParameterError
        from ov3dseg_ros.replay import ReplayError, replay_bag
    except ImportError as exc:
        raise EvalInputError(f"evaluating a bag replays it through the ROS node graph, which is not available here "
                             f"({exc}); run scripts/setup.sh, then . .venv/bin/activate") from None

    points, labels, names, instances = read_bag_ground_truth(bag_path)
    if split is not None:
        split.label_lookup(names)  # fail before the replay when the split does not fit the bag's classes
    if not oracle:
        try:
            resolve_checkpoint(model)
        except OSError as exc:
            raise EvalInputError(f"model {model!r}: {exc}") from None
        params = {**params, "model": model}
    classes = split.evaluated if split is not None else names
    try:
        result = replay_bag(bag_path, params=params, oracle=oracle, deterministic=True,
                            save_map=str(out_dir / MAP_FILE), queries=classes)
    except (ReplayError, ParameterError) as exc:
        raise EvalInputError(str(exc)) from None
    voxel_map = VoxelMap.load(result.map_path)
    query = query_report({text: _query_record(response, points[labels == names.index(text)] if text in names
                                              else points[:0], voxel_map.voxel_size)
                          for text, response in result.queries})
    if result.model is not None:
        from ov3dseg_core.training.evaluation import evaluate_features
        from ov3dseg_core.eval.instances import live_instance_report
        objects = live_instance_report(voxel_map, result.model.embed, points, labels, instances, names, split)
        return (evaluate_features(result.model, voxel_map, points, labels, names, split),
                {"model": model_entry(model, result.model.kind, result.model_passes), "query": query,
                 **({"instances": objects} if objects is not None else {})})
    map_names = voxel_map.label_names or list(result.label_names)
    return evaluate_map(voxel_map, points, labels, names, split=split,
                        map_label_names=None if map_names == names else map_names), {"query": query}


def _query_record(response, class_points: np.ndarray, voxel_size: float) -> dict[str, Any]:
    """The query benchmark entry of one ov3dseg_ros/srv/Query response; EvalInputError when the query failed."""
    if not response.success:
        raise EvalInputError(f"/query failed: {response.message}")
    best = response.hits[0] if response.hits else None
    center = None if best is None else (best.center.x, best.center.y, best.center.z)
    return class_record(class_points, response.found, center, len(response.hits), response.max_score,
                        None if best is None else best.confidence, voxel_size)


def _segmenter(model: str):
    from ov3dseg_core.models.map_segmenter import MapSegmenter, resolve_checkpoint
    from ov3dseg_core.models.semantic_stage import checkpoint_kind
    from ov3dseg_core.training.checkpoint import read_metadata
    try:
        if checkpoint_kind(read_metadata(resolve_checkpoint(model))["config"]) == "3d":
            return MapSegmenter.from_checkpoint(model)
    except (OSError, ValueError) as exc:
        raise EvalInputError(f"model {model!r}: {exc}") from None
    raise EvalInputError(f"model {model!r} is an XMask3D checkpoint: evaluate it on a bag (through the node, "
                         "2D branch on key frames) or with `ov3dseg evaluate xmask3d_tiny CKPT`")


def evaluate_dataset(path: Path, params: dict[str, Any], oracle: bool, split: Split | None, out_dir: Path,
                     frame_stride: int = 1, model: str = "default") -> EvalReport:
    """Fuse a dataset scene's frames offline into a VoxelMap and evaluate it: labels from the ground-truth label
    images (``oracle``) or from the model's per-voxel features."""
    from ov3dseg_core.data import open_scene
    from ov3dseg_core.data.frames import frame_points
    from ov3dseg_core.mapping.voxel_map import VoxelMap, VoxelMapConfig

    if frame_stride < 1:
        raise EvalInputError(f"--frame-stride must be >= 1, got {frame_stride}")
    offline = from_dict(OfflineParams, {k: v for k, v in params.items()
                                        if k in {f.name for f in dataclasses.fields(OfflineParams)}}, "params")
    scene = open_scene(path)
    if scene.points is None or scene.labels is None or not scene.label_names:
        raise EvalInputError(f"scene {scene.name!r} ({path}) has no labelled point cloud to evaluate against")
    if split is not None:
        split.label_lookup(scene.label_names)  # fail before fusing when the split does not fit the scene's classes
    if not oracle:
        from ov3dseg_core.training.evaluation import evaluate_scene
        return evaluate_scene(_segmenter(model), scene, split, offline.voxel_size)
    voxel_map = VoxelMap(VoxelMapConfig(voxel_size=offline.voxel_size, num_labels=len(scene.label_names),
                                        max_voxels=offline.max_voxels), label_names=scene.label_names)
    frames = scene.frames[::frame_stride]
    skipped = 0
    for index, frame in enumerate(tqdm(frames, desc=f"fusing {scene.name}", unit="frame")):
        if frame.labels is None:
            raise EvalInputError(f"frame {index * frame_stride} of {scene.name!r} has no ground-truth label image")
        if frame.pose is None:
            skipped += 1
            continue
        points, colors, labels = frame_points(frame, min_range=offline.depth_min_range,
                                              max_range=offline.depth_max_range, stride=offline.depth_stride)
        voxel_map.integrate(points, colors=colors, labels=labels, sensor_origin=frame.pose[:3, 3])
    if skipped:
        print(f"ov3dseg eval: skipped {skipped} of {len(frames)} frames without a pose", file=sys.stderr)
    voxel_map.save(out_dir / MAP_FILE)
    return evaluate_map(voxel_map, scene.points, scene.labels, scene.label_names, split=split)


def main(args: argparse.Namespace) -> int:
    try:
        split = load_split(args.split) if args.split else None
        params = load_params(args.params)
        if args.voxel_size is not None:
            params["voxel_size"] = args.voxel_size
        if not args.input.exists():
            raise EvalInputError(f"{args.input} does not exist")
        args.out.mkdir(parents=True, exist_ok=True)
        sections: dict[str, Any] = {}
        if is_bag(args.input):
            report, sections = evaluate_bag(args.input, params, args.oracle, split, args.out, args.model)
        else:
            report = evaluate_dataset(args.input, params, args.oracle, split, args.out, args.frame_stride,
                                      args.model)
    except (EvalInputError, SplitError) as exc:
        print(f"ov3dseg eval: {exc}", file=sys.stderr)
        return 2
    paths = write_report(report, args.out)
    print(markdown_table(report), end="")
    if sections:
        summary = json.loads(paths["json"].read_text(encoding="utf-8"))
        paths["json"].write_text(json.dumps({**summary, **sections}, indent=2) + "\n", encoding="utf-8")
        text = (markdown_model(sections["model"]) if "model" in sections else "") + markdown_query(sections["query"])
        if "instances" in sections:
            counts = sections["instances"]
            text += (f"\nInstances (map: {counts['map_instances']}, ground truth: {counts['gt_instances']}):\n\n"
                     + markdown_instances(counts))
        with open(paths["markdown"], "a", encoding="utf-8") as f:
            f.write(text)
        print(text, end="")
    return 0
