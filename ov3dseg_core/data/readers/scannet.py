"""ScanNet v2: raw ``.sens`` RGB-D streams with ``_vh_clean_2.labels.ply``, and the preprocessed layouts.

.sens (little-endian; ScanNet's SensReader): uint32 version (4); uint64 n + n bytes sensor name; 4 x 16 float32
(intrinsic_color, extrinsic_color, intrinsic_depth, extrinsic_depth, row-major 4x4); int32 colour compression
(-1 unknown, 0 raw, 1 png, 2 jpeg); int32 depth compression (-1 unknown, 0 raw_ushort, 1 zlib_ushort,
2 occi_ushort); uint32 colour width, height, depth width, height; float32 depth shift (units per metre);
uint64 frame count; per frame: 16 float32 camera_to_world (all -inf when tracking failed), uint64 colour and
depth time stamps (microseconds), uint64 colour and depth byte sizes, then the two payloads.

Preprocessed layouts: Pointcept's per-scene folder (coord.npy, color.npy, segment20.npy, segment200.npy,
instance.npy; -1 = ignore) and the OpenScene/PLA ``.pth`` tuple (coords, colors in [-1, 1], labels with 255 or
-100 = ignore[, instance labels]).
"""
from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from ov3dseg_core.data.frames import LazyFrames, RGBDFrame, Scene
from ov3dseg_core.data.image_files import read_color, resize_color
from ov3dseg_core.data.ply import read_ply_vertices
from ov3dseg_core.data.readers.scannet200 import SCANNET200, nyu40_to_scannet20
from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.labels import IGNORE_LABEL, SCANNET20
from ov3dseg_core.registry import REGISTRY

SENS_VERSION = 4
COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_FRAME_HEAD = struct.Struct("<16f4Q")
SYNTHETIC_FPS = 30.0


class SensFormatError(ValueError):
    """A .sens file that does not follow the ScanNet layout (or uses an unsupported compression)."""


class SensFile:
    """Random access to the frames of a ScanNet ``.sens`` file; the header and a frame index are read on open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        with open(self.path, "rb") as f:
            (version,) = struct.unpack("<I", f.read(4))
            if version != SENS_VERSION:
                raise SensFormatError(f"{self.path}: .sens version {version}, expected {SENS_VERSION}")
            (name_len,) = struct.unpack("<Q", f.read(8))
            self.sensor_name = f.read(name_len).decode("utf-8", "replace")
            mats = np.frombuffer(f.read(4 * 64), dtype="<f4").astype(np.float64).reshape(4, 4, 4)
            self.intrinsic_color, self.extrinsic_color, self.intrinsic_depth, self.extrinsic_depth = mats
            color_c, depth_c, cw, ch, dw, dh, shift, n = struct.unpack("<2i4IfQ", f.read(4 * 7 + 8))
            if color_c not in COLOR_COMPRESSION or depth_c not in DEPTH_COMPRESSION:
                raise SensFormatError(f"{self.path}: unknown compression codes colour {color_c}, depth {depth_c}")
            self.color_compression, self.depth_compression = COLOR_COMPRESSION[color_c], DEPTH_COMPRESSION[depth_c]
            self.color_size, self.depth_size = (cw, ch), (dw, dh)
            self.depth_shift = float(shift)
            self._offsets, self.poses, self.stamps_us = [], [], []
            for i in range(n):
                head = f.read(_FRAME_HEAD.size)
                if len(head) != _FRAME_HEAD.size:
                    raise SensFormatError(f"{self.path}: truncated at frame {i} of {n}")
                values = _FRAME_HEAD.unpack(head)
                color_bytes, depth_bytes = values[18], values[19]
                self._offsets.append((f.tell(), color_bytes, depth_bytes))
                self.poses.append(np.array(values[:16], dtype=np.float64).reshape(4, 4))
                self.stamps_us.append(values[16])
                f.seek(color_bytes + depth_bytes, 1)
            if self._offsets and f.tell() > self.path.stat().st_size:
                raise SensFormatError(f"{self.path}: frame data runs past the end of the file")
        self._file = None

    def __len__(self) -> int:
        return len(self._offsets)

    def read_raw(self, index: int) -> tuple[bytes, bytes]:
        """The compressed (colour, depth) payloads of frame ``index``."""
        offset, color_bytes, depth_bytes = self._offsets[index]
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "rb")
            self._file.seek(offset)
            data = self._file.read(color_bytes + depth_bytes)
        if len(data) != color_bytes + depth_bytes:
            raise SensFormatError(f"{self.path}: frame {index} is truncated")
        return data[:color_bytes], data[color_bytes:]

    def depth(self, index: int) -> np.ndarray:
        """Depth of frame ``index``: (H, W) float32 metres at the depth resolution, 0 = invalid."""
        _, raw = self.read_raw(index)
        if self.depth_compression == "zlib_ushort":
            raw = zlib.decompress(raw)
        elif self.depth_compression != "raw_ushort":
            raise SensFormatError(f"{self.path}: depth compression {self.depth_compression} is not supported")
        dw, dh = self.depth_size
        if len(raw) != dw * dh * 2:
            raise SensFormatError(f"{self.path}: frame {index} depth has {len(raw)} bytes, expected {dw * dh * 2}")
        return (np.frombuffer(raw, dtype="<u2").reshape(dh, dw) / np.float32(self.depth_shift)).astype(np.float32)

    def color(self, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Colour of frame ``index``: (H, W, 3) uint8 RGB, resized to ``size`` = (W, H) when given."""
        raw, _ = self.read_raw(index)
        if self.color_compression in ("jpeg", "png"):
            return read_color(raw, size=size)
        if self.color_compression == "raw":
            cw, ch = self.color_size
            image = np.frombuffer(raw, dtype=np.uint8).reshape(ch, cw, 3)
            return image if size is None or size == (cw, ch) else resize_color(image, size)
        raise SensFormatError(f"{self.path}: colour compression {self.color_compression} is not supported")

    def pose(self, index: int) -> np.ndarray | None:
        """T_world_camera of frame ``index`` (float64), None where tracking failed (non-finite matrix)."""
        pose = self.poses[index]
        return pose.copy() if np.isfinite(pose).all() else None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_labels_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``*_vh_clean_2.labels.ply`` -> (vertices (N, 3) float32 metres, NYU40 ids (N,) int32; 0 = unannotated)."""
    v = read_ply_vertices(path)
    if "label" not in v.dtype.names:
        raise ValueError(f"{path}: no 'label' vertex property (not a ScanNet labels.ply)")
    return np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32), v["label"].astype(np.int32)


def _ply_colors(path: Path) -> np.ndarray | None:
    v = read_ply_vertices(path)
    if "red" not in v.dtype.names:
        return None
    return np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)


def _find(path: Path, pattern: str) -> Path | None:
    found = sorted(path.glob(pattern))
    return found[0] if found else None


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".sens" or path.name.endswith("_vh_clean_2.labels.ply")
    return _find(path, "*.sens") is not None or _find(path, "*_vh_clean_2.labels.ply") is not None


def detect_preprocessed(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".pth"
    return (path / "coord.npy").exists() and ((path / "segment20.npy").exists() or (path / "segment200.npy").exists())


@REGISTRY.register("dataset", "scannet")
def open_scannet(path: str | Path, fps: float = SYNTHETIC_FPS) -> Scene:
    """A raw ScanNet scene: a scene folder (``<scene>.sens``, ``<scene>_vh_clean_2.labels.ply``,
    ``<scene>_vh_clean_2.ply``) or one of those files.

    Frames come from the .sens (colour resized to the depth resolution, depth intrinsics; stamps from the file,
    or i / fps when it has none). Points: the labelled mesh vertices, labels in ScanNet-20 (label_names =
    SCANNET20), colours from ``_vh_clean_2.ply`` when present (the labels.ply colours encode classes).
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    sens_path = path if path.suffix == ".sens" else _find(folder, "*.sens")
    labels_path = path if path.name.endswith(".labels.ply") else _find(folder, "*_vh_clean_2.labels.ply")
    if sens_path is None and labels_path is None:
        raise FileNotFoundError(f"{path}: no .sens or _vh_clean_2.labels.ply found")
    frames: LazyFrames | list = []
    if sens_path is not None:
        sens = SensFile(sens_path)
        dw, dh = sens.depth_size
        camera = PinholeCamera.from_K(sens.intrinsic_depth[:3, :3], dw, dh)
        stamps_us = np.asarray(sens.stamps_us, dtype=np.int64)
        if len(stamps_us) and stamps_us.max() > 0:
            stamps = (stamps_us * 1000).tolist()
        else:
            stamps = [int(round(i * 1e9 / fps)) for i in range(len(sens))]

        def load(i: int) -> RGBDFrame:
            return RGBDFrame(color=sens.color(i, size=(dw, dh)), depth=sens.depth(i), camera=camera,
                             pose=sens.pose(i), stamp_ns=int(stamps[i]))

        frames = LazyFrames(load, len(sens))
    points = colors = labels = None
    if labels_path is not None:
        points, nyu40 = read_labels_ply(labels_path)
        labels = nyu40_to_scannet20(nyu40)
        mesh = Path(str(labels_path).replace(".labels.ply", ".ply"))
        colors = _ply_colors(mesh) if mesh.exists() else None
        if colors is not None and len(colors) != len(points):
            raise ValueError(f"{mesh} has {len(colors)} vertices, {labels_path} has {len(points)}")
    name = (sens_path or labels_path).name.split(".")[0].replace("_vh_clean_2", "")
    return Scene(name=name, frames=frames, label_names=list(SCANNET20), points=points, colors=colors, labels=labels)


def _class_ids(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Class ids with any out-of-range marker (-1, -100, 255, ...) -> IGNORE_LABEL, as int32."""
    values = np.asarray(values).astype(np.int64).reshape(-1)
    return np.where((values >= 0) & (values < num_classes), values, IGNORE_LABEL).astype(np.int32)


def _colors_u8(colors: np.ndarray) -> np.ndarray:
    """Colours stored as 0..255 (any dtype) or normalised to [-1, 1] (OpenScene/PLA) -> uint8."""
    colors = np.asarray(colors, dtype=np.float64)
    if colors.size and colors.min() < 0:
        colors = (colors + 1.0) * 127.5
    elif colors.size and colors.max() <= 1.0:
        colors = colors * 255.0
    return np.clip(np.rint(colors), 0, 255).astype(np.uint8)


def load_pth(path: str | Path, trust_pickle: bool = False) -> tuple:
    """A ``.pth`` scene tuple of NumPy arrays, loaded with torch's safe unpickler (NumPy arrays allowlisted).

    ``trust_pickle=True`` falls back to full unpickling (runs code from the file: trusted files only).
    """
    import torch

    reconstruct = np._core.multiarray._reconstruct
    allowed = [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in ("f4", "f8", "i4", "i8", "u1", "u2", "i2", "i1", "bool")]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not trust_pickle:
            raise ValueError(f"{path}: cannot load safely ({exc}); pass trust_pickle=True for files you "
                             "trust") from exc
        data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, (tuple, list)) or len(data) < 2:
        raise ValueError(f"{path}: expected a (coords, colors[, labels[, instances]]) tuple, got {type(data)}")
    return tuple(d.numpy() if hasattr(d, "numpy") else np.asarray(d) for d in data)


@REGISTRY.register("dataset", "scannet_preprocessed")
def open_scannet_preprocessed(path: str | Path, label_space: str = "scannet20", trust_pickle: bool = False) -> Scene:
    """A preprocessed ScanNet scene (points only, no frames): a Pointcept folder or an OpenScene/PLA ``.pth``.

    label_space: "scannet20" (segment20.npy / the .pth labels) or "scannet200" (segment200.npy).
    """
    path = Path(path)
    if label_space not in ("scannet20", "scannet200"):
        raise ValueError(f"label_space must be 'scannet20' or 'scannet200', got {label_space!r}")
    names = list(SCANNET20 if label_space == "scannet20" else SCANNET200)
    if path.suffix == ".pth":
        if label_space != "scannet20":
            raise ValueError(f"{path}: .pth scene tuples carry ScanNet-20 labels only")
        data = load_pth(path, trust_pickle=trust_pickle)
        points = np.asarray(data[0], dtype=np.float32)
        colors = _colors_u8(data[1])
        labels = _class_ids(data[2], len(names)) if len(data) > 2 else None
        instances = np.asarray(data[3]).astype(np.int64) if len(data) > 3 else None
        instances = None if instances is None else np.where(instances >= 0, instances, IGNORE_LABEL).astype(np.int32)
        return Scene(name=path.stem, frames=[], label_names=names, points=points, colors=colors, labels=labels,
                     instances=instances)
    segment_file = path / ("segment20.npy" if label_space == "scannet20" else "segment200.npy")
    points = np.load(path / "coord.npy").astype(np.float32)
    colors = _colors_u8(np.load(path / "color.npy")) if (path / "color.npy").exists() else None
    labels = _class_ids(np.load(segment_file), len(names)) if segment_file.exists() else None
    instances = np.load(path / "instance.npy").astype(np.int32) if (path / "instance.npy").exists() else None
    if instances is not None:
        instances[instances < 0] = IGNORE_LABEL
    return Scene(name=path.name, frames=[], label_names=names, points=points, colors=colors, labels=labels,
                 instances=instances)
