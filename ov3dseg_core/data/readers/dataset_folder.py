"""Our ScanNet-style dataset folder: what ``ov3dseg sim --dataset-dir`` writes and the offline tools read.

Layout (frame files share a zero-padded index stem, e.g. ``000042``)::

    color/<i>.jpg|png            (H, W, 3) RGB
    depth/<i>.png                uint16 millimetres, 0 = invalid, registered to colour
    pose/<i>.txt                 4x4 T_world_camera (optical frame); all -inf when unknown (as ScanNet)
    intrinsic/intrinsic_color.txt  4x4, K in the upper-left 3x3 (intrinsic_depth.txt is read as a fallback)
    label/<i>.png                optional, uint16 class ids, 65535 = unlabelled
    instance/<i>.png             optional, uint16 instance ids, 65535 = none
    points.ply | points.npy      optional labelled cloud: x y z (float32 m, world) red green blue (uint8)
                                 label instance (int32, -1 = none); the .npy form is an (N, 8) float array
    label_names.json             JSON list, label_names[i] names class id i
    scene.json                   {"name", "stamps_ns": [...]} (optional; frames at 30 Hz otherwise)

ScanNet's own exported frames (SensReader output: color/0.jpg at 1296x968, depth/0.png at 640x480) read too:
colour is resized to the depth resolution and the depth intrinsics are used.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ov3dseg_core.data.frames import (LazyFrames, RGBDFrame, Scene, depth_to_u16_mm, labels_from_u16,
                                      labels_to_u16)
from ov3dseg_core.data.image_files import (image_size, read_color, read_matrix_txt, read_u16, write_color,
                                           write_matrix_txt, write_u16)
from ov3dseg_core.data.ply import read_ply_vertices, write_ply_vertices
from ov3dseg_core.geometry.camera import PinholeCamera, depth_to_metres
from ov3dseg_core.labels import IGNORE_LABEL
from ov3dseg_core.registry import REGISTRY

SYNTHETIC_FPS = 30.0
POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                        ("blue", "u1"), ("label", "<i4"), ("instance", "<i4")])


def detect(path: Path) -> bool:
    return all((path / d).is_dir() for d in ("depth", "pose", "intrinsic"))


def _frame_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in suffixes}


def _numeric_key(stem: str) -> tuple[int, str]:
    return (int(stem), stem) if stem.isdigit() else (1 << 62, stem)


def scene_points_array(scene: Scene) -> np.ndarray:
    """The scene's labelled cloud as a POINT_DTYPE structured array (missing columns: grey / -1)."""
    if scene.points is None:
        raise ValueError(f"scene {scene.name!r} has no point cloud")
    out = np.zeros(len(scene.points), dtype=POINT_DTYPE)
    for axis, name in enumerate("xyz"):
        out[name] = scene.points[:, axis]
    colors = np.full((len(out), 3), 128, np.uint8) if scene.colors is None else scene.colors
    for channel, name in enumerate(("red", "green", "blue")):
        out[name] = colors[:, channel]
    out["label"] = IGNORE_LABEL if scene.labels is None else scene.labels
    out["instance"] = IGNORE_LABEL if scene.instances is None else scene.instances
    return out


def _read_points(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None] | None:
    if (path / "points.ply").exists():
        v = read_ply_vertices(path / "points.ply")
        names = v.dtype.names
        points = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
        colors = (np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
                  if "red" in names else None)
        labels = v["label"].astype(np.int32) if "label" in names else None
        instances = v["instance"].astype(np.int32) if "instance" in names else None
        return points, colors, labels, instances
    if (path / "points.npy").exists():
        table = np.load(path / "points.npy")
        if table.ndim != 2 or table.shape[1] not in (3, 6, 7, 8):
            raise ValueError(f"{path / 'points.npy'}: expected an (N, 3|6|7|8) array, got {table.shape}")
        cols = table.shape[1]
        return (table[:, :3].astype(np.float32),
                np.clip(np.rint(table[:, 3:6]), 0, 255).astype(np.uint8) if cols >= 6 else None,
                table[:, 6].astype(np.int32) if cols >= 7 else None,
                table[:, 7].astype(np.int32) if cols >= 8 else None)
    return None


@REGISTRY.register("dataset", "dataset_folder")
def open_dataset_folder(path: str | Path, fps: float = SYNTHETIC_FPS) -> Scene:
    """Read a ScanNet-style folder (layout in the module docstring); frames load lazily."""
    path = Path(path)
    if not detect(path):
        raise FileNotFoundError(f"{path}: not a dataset folder (needs depth/, pose/ and intrinsic/)")
    depth_files = _frame_files(path / "depth", (".png",))
    stems = sorted(depth_files, key=_numeric_key)
    color_files = _frame_files(path / "color", (".jpg", ".jpeg", ".png"))
    label_files = _frame_files(path / "label", (".png",))
    instance_files = _frame_files(path / "instance", (".png",))
    intrinsic = next((path / "intrinsic" / n for n in ("intrinsic_color.txt", "intrinsic_depth.txt")
                      if (path / "intrinsic" / n).exists()), None)
    if intrinsic is None:
        raise FileNotFoundError(f"{path / 'intrinsic'}: no intrinsic_color.txt or intrinsic_depth.txt")
    K_color = read_matrix_txt(intrinsic)[:3, :3]
    K_depth_file = path / "intrinsic" / "intrinsic_depth.txt"
    K_depth = read_matrix_txt(K_depth_file)[:3, :3] if K_depth_file.exists() else K_color
    meta = json.loads((path / "scene.json").read_text()) if (path / "scene.json").exists() else {}
    stamps = meta.get("stamps_ns") or [int(round(i * 1e9 / fps)) for i in range(len(stems))]
    if len(stamps) != len(stems):
        raise ValueError(f"{path / 'scene.json'}: {len(stamps)} stamps for {len(stems)} depth frames")
    label_names_file = path / "label_names.json"
    label_names = json.loads(label_names_file.read_text()) if label_names_file.exists() else []

    # ScanNet exports keep colour at its own resolution: it is then resized to the depth and K_depth applies
    color_resized = bool(stems) and stems[0] in color_files and image_size(color_files[stems[0]]) != image_size(
        depth_files[stems[0]])
    K = K_depth if color_resized or not color_files else K_color

    def load(i: int) -> RGBDFrame:
        stem = stems[i]
        depth_u16 = read_u16(depth_files[stem])
        height, width = depth_u16.shape
        color = read_color(color_files[stem], size=(width, height)) if stem in color_files else None
        pose = read_matrix_txt(path / "pose" / f"{stem}.txt") if (path / "pose" / f"{stem}.txt").exists() else None
        if pose is not None and not np.isfinite(pose).all():
            pose = None
        labels = labels_from_u16(read_u16(label_files[stem])) if stem in label_files else None
        instances = labels_from_u16(read_u16(instance_files[stem])) if stem in instance_files else None
        return RGBDFrame(color=color, depth=depth_to_metres(depth_u16),
                         camera=PinholeCamera.from_K(K, width, height), pose=pose, stamp_ns=int(stamps[i]),
                         labels=labels, instances=instances)

    cloud = _read_points(path)
    points, colors, labels, instances = cloud if cloud is not None else (None, None, None, None)
    return Scene(name=meta.get("name", path.name), frames=LazyFrames(load, len(stems)), label_names=label_names,
                 points=points, colors=colors, labels=labels, instances=instances)


def write_dataset_folder(scene: Scene, out_dir: str | Path, color_format: str = "jpg",
                         progress: bool = True) -> Path:
    """Write ``scene`` in the layout above (frames, intrinsics of frame 0, labelled cloud, names, stamps).

    All frames must share one camera. ``color_format`` is "jpg" (compact) or "png" (lossless).
    Raises FileExistsError when ``out_dir`` already holds frames.
    """
    if color_format not in ("jpg", "png"):
        raise ValueError(f"color_format must be 'jpg' or 'png', got {color_format!r}")
    out = Path(out_dir)
    if (out / "depth").exists() and any((out / "depth").iterdir()):
        raise FileExistsError(f"{out} already holds a dataset folder; choose an empty directory")
    for sub in ("color", "depth", "pose", "intrinsic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(len(scene.frames))))
    camera, stamps = None, []
    for i, frame in enumerate(tqdm(scene.frames, desc=f"writing {out.name}", unit="frame", disable=not progress)):
        if camera is None:
            camera = frame.camera
            K4 = np.eye(4)
            K4[:3, :3] = camera.K
            write_matrix_txt(out / "intrinsic" / "intrinsic_color.txt", K4)
        elif frame.camera != camera:
            raise ValueError(f"frame {i} has camera {frame.camera}, frame 0 has {camera}: one camera per folder")
        stem = f"{i:0{digits}d}"
        if frame.color is not None:
            write_color(out / "color" / f"{stem}.{color_format}", frame.color)
        write_u16(out / "depth" / f"{stem}.png", depth_to_u16_mm(frame.depth))
        write_matrix_txt(out / "pose" / f"{stem}.txt", np.full((4, 4), -np.inf) if frame.pose is None else frame.pose)
        for sub, image in (("label", frame.labels), ("instance", frame.instances)):
            if image is not None:
                (out / sub).mkdir(exist_ok=True)
                write_u16(out / sub / f"{stem}.png", labels_to_u16(image))
        stamps.append(int(frame.stamp_ns))
    if scene.points is not None:
        write_ply_vertices(out / "points.ply", scene_points_array(scene))
    (out / "label_names.json").write_text(json.dumps(list(scene.label_names)))
    (out / "scene.json").write_text(json.dumps({"name": scene.name, "stamps_ns": stamps}))
    return out
