"""Voxel map files: atomic safetensors save/load with a checksum, and binary PLY export.

Map file: one safetensors file holding the arrays of ``VoxelMap.state()`` (per voxel in ascending key order:
STATE_FIELDS and the instance ids; the instance table: INSTANCE_FIELDS) and string metadata: ``format``
(FORMAT_NAME), ``version``, ``voxel_size`` (metres), ``num_labels``, ``feature_dim``, ``num_voxels``,
``num_instances``, ``tick``, ``label_names`` (JSON list or "null") and ``checksum`` (CRC-32 of the array bytes
in ``array_names`` order). Version 1 files (before the instance layer: no instance arrays, no ``num_instances``)
are read as maps without instances. Files are written to a temporary file in the target directory, fsynced and
renamed over the target, so a crash mid-save leaves the previous file intact.

Loading trusts nothing in a file: every metadata field is parsed with its type and range, every array's dtype and
shape are checked against the metadata from the file's header before any array is read, then the checksum, and
the map data itself (VoxelMap.from_state, finite features, stamps >= 0). Whatever is wrong is a MapFileError.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ov3dseg_core.atomic_write import atomic_path
from ov3dseg_core.mapping.voxel_map import INSTANCE_FIELDS, STATE_FIELDS, VoxelMap, VoxelMapConfig

FORMAT_NAME = "ov3dseg.voxel_map"
FORMAT_VERSION = 2
READ_VERSIONS = ("1", "2")
"""Versions ``load_map`` reads (1: without the instance layer)."""

PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                      ("label", "<i4"), ("score", "<f4"), ("instance", "<i4")])
"""PLY vertex layout: mean position (metres, map frame), RGB, label id (-1 = none), label confidence, instance id
(-1 = none; the map's instance layer)."""

_PLY_TYPES = {"<f4": "float", "u1": "uchar", "<i4": "int"}
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32",
                       np.dtype(np.int64): "I64"}
_TORCH_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int32: "I32", torch.int64: "I64"}
MAX_LABELS = 65534
"""Most label bins a map file may declare (16-bit label images)."""
MAX_FEATURE_DIM = 4096
"""Longest per-voxel feature a map file may declare."""
MAX_HEADER_BYTES = 100_000_000
"""Largest safetensors header that ``is_map_file`` reads (the format's own limit)."""


class MapFileError(ValueError):
    """A map file that is corrupt, truncated or incompatible with what was asked for."""


def save_map(voxel_map: VoxelMap, path: str | Path) -> None:
    """Write ``voxel_map`` to ``path`` (one safetensors file, atomically)."""
    state = voxel_map.state()
    tick = int(state.pop("tick"))
    tensors = {name: state[name].contiguous() for name in array_names(FORMAT_VERSION)}  # copies under the map's lock
    cfg = voxel_map.config
    metadata = {
        "format": FORMAT_NAME,
        "version": str(FORMAT_VERSION),
        "voxel_size": repr(cfg.voxel_size),
        "num_labels": str(cfg.num_labels),
        "feature_dim": str(cfg.feature_dim),
        "num_voxels": str(int(tensors["keys"].shape[0])),
        "num_instances": str(int(tensors["instance_score"].shape[0])),
        "tick": str(tick),
        "label_names": json.dumps(voxel_map.label_names),
        "checksum": _checksum(tensors),
    }
    with atomic_path(path) as tmp:
        write_safetensors(tmp, {name: t.numpy() for name, t in tensors.items()}, metadata)


def load_map(path: str | Path, device: str | None = None, config: VoxelMapConfig | None = None) -> VoxelMap:
    """Read a map file. ``config`` (optional) supplies the runtime settings (max_voxels, clearing_radius, device)
    and must agree with the file's voxel_size, num_labels and feature_dim; ``device`` overrides its device.

    FileNotFoundError when ``path`` does not exist; MapFileError naming the problem for anything else wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no map file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            version = _check_format(path, meta)
            voxel_size, num_labels, feature_dim, num_voxels, num_instances, tick, label_names = _read_metadata(
                path, meta, version)
            _check_arrays(path, f, _expected_arrays(voxel_size, num_labels, feature_dim, num_voxels, num_instances,
                                                    version))
            tensors = {name: f.get_tensor(name) for name in array_names(version)}
    except SafetensorError as exc:
        raise MapFileError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    if meta.get("checksum") != _checksum(tensors, version):
        raise MapFileError(f"{path}: checksum mismatch (file corrupt): stored {meta.get('checksum')}, "
                           f"computed {_checksum(tensors, version)}")
    if not bool(torch.isfinite(tensors["feature"]).all()):
        raise MapFileError(f"{path}: array 'feature' holds non-finite values")
    if tensors["stamp"].numel() and int(tensors["stamp"].min()) < 0:
        raise MapFileError(f"{path}: array 'stamp' holds negative values")
    if config is None:
        config = VoxelMapConfig(voxel_size=voxel_size, num_labels=num_labels, feature_dim=feature_dim)
    else:
        file_values = {"voxel_size": voxel_size, "num_labels": num_labels, "feature_dim": feature_dim}
        for name, value in file_values.items():
            if getattr(config, name) != value:
                raise MapFileError(f"{path}: incompatible map: file {name}={value}, "
                                   f"configured {name}={getattr(config, name)}")
    if device is not None:
        config = dataclasses.replace(config, device=device)
    try:
        return VoxelMap.from_state(config, {**tensors, "tick": torch.tensor(tick)}, label_names)
    except ValueError as exc:
        raise MapFileError(f"{path}: inconsistent map data: {exc}") from None


def export_ply(voxel_map: VoxelMap, path: str | Path) -> None:
    """Write the voxels as a binary little-endian PLY (PLY_DTYPE per vertex), atomically."""
    with voxel_map.lock:
        positions, colors = voxel_map.positions(), voxel_map.colors()
        labels, confidence = voxel_map.labels()
        instances = voxel_map.instances()
    vertices = np.empty(len(positions), dtype=PLY_DTYPE)
    vertices["x"], vertices["y"], vertices["z"] = positions.T
    vertices["red"], vertices["green"], vertices["blue"] = colors.T
    vertices["label"], vertices["score"], vertices["instance"] = labels, confidence, instances
    header = ["ply", "format binary_little_endian 1.0",
              f"comment ov3dseg voxel map, voxel_size {voxel_map.voxel_size} m, frame map",
              f"element vertex {len(vertices)}"]
    header += [f"property {_PLY_TYPES[PLY_DTYPE[name].str.lstrip('|')]} {name}" for name in PLY_DTYPE.names]
    header.append("end_header\n")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write("\n".join(header).encode("ascii"))
        f.write(vertices.tobytes())


def write_safetensors(path: str | Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write arrays as a safetensors file straight from their buffers (no serialised copy in memory).

    Layout (the safetensors format): 8-byte little-endian header length, JSON header (tensor dtypes, shapes and
    byte ranges, plus ``__metadata__``) padded with spaces to 8 bytes, then the raw little-endian array bytes,
    widest element type first so that every array starts aligned to its element size.
    """
    arrays = dict(sorted(arrays.items(), key=lambda item: (-item[1].dtype.itemsize, item[0])))
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, array in arrays.items():
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for array in arrays.values():
            f.write(np.ascontiguousarray(array).data)


def is_map_file(path: str | Path) -> bool:
    """Whether ``path`` is a file whose safetensors header names the ov3dseg map format (arrays not read)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                return False
            header = json.loads(f.read(size))
        return isinstance(header, dict) and (header.get("__metadata__") or {}).get("format") == FORMAT_NAME
    except (OSError, ValueError, RecursionError, AttributeError):
        return False


def array_names(version: int | str) -> tuple[str, ...]:
    """The arrays of a map file of ``version``, in checksum order."""
    return STATE_FIELDS if str(version) == "1" else STATE_FIELDS + INSTANCE_FIELDS


def _read_metadata(path: Path, meta: dict, version: str) -> tuple[float, int, int, int, int, int, list[str] | None]:
    """(voxel_size, num_labels, feature_dim, num_voxels, num_instances, tick, label_names) parsed strictly from the
    metadata (num_instances 0 in version 1)."""
    try:
        voxel_size = float(meta["voxel_size"])
        num_labels, feature_dim = int(meta["num_labels"]), int(meta["feature_dim"])
        num_voxels, tick = int(meta["num_voxels"]), int(meta["tick"])
        num_instances = 0 if version == "1" else int(meta["num_instances"])
        label_names = json.loads(meta["label_names"])
    except (KeyError, ValueError, RecursionError) as exc:
        raise MapFileError(f"{path}: bad or missing metadata ({exc!r})") from None
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise MapFileError(f"{path}: voxel_size {voxel_size!r} is not a positive number of metres")
    for name, value, high in (("num_labels", num_labels, MAX_LABELS), ("feature_dim", feature_dim, MAX_FEATURE_DIM),
                              ("num_voxels", num_voxels, None), ("num_instances", num_instances, None),
                              ("tick", tick, None)):
        if value < 0 or (high is not None and value > high):
            raise MapFileError(f"{path}: {name} {value} outside [0, {high if high is not None else 'inf'}]")
    if label_names is not None and not (isinstance(label_names, list) and len(label_names) == num_labels
                                        and all(isinstance(n, str) for n in label_names)):
        raise MapFileError(f"{path}: label_names must be null or a list of {num_labels} strings (num_labels), got "
                           f"{str(label_names)[:200]}")
    return voxel_size, num_labels, feature_dim, num_voxels, num_instances, tick, label_names


def _expected_arrays(voxel_size: float, num_labels: int, feature_dim: int, num_voxels: int, num_instances: int,
                     version: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{array name: (safetensors dtype, shape)} of a map with these sizes (taken from an empty VoxelMap): per-voxel
    arrays have num_voxels rows, the instance table's num_instances."""
    empty = VoxelMap(VoxelMapConfig(voxel_size=voxel_size, num_labels=num_labels, feature_dim=feature_dim)).state()
    rows = {name: num_instances for name in INSTANCE_FIELDS[1:]}
    return {name: (_TORCH_DTYPES[empty[name].dtype], (rows.get(name, num_voxels), *empty[name].shape[1:]))
            for name in array_names(version)}


def _check_arrays(path: Path, f, expected: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """MapFileError unless the file holds exactly the expected arrays with their dtypes and shapes (header only)."""
    names = set(f.keys())
    if names != set(expected):
        raise MapFileError(f"{path}: arrays {sorted(names)} do not match the format ({sorted(expected)})")
    for name, (dtype, shape) in expected.items():
        array = f.get_slice(name)
        found = (array.get_dtype(), tuple(array.get_shape()))
        if found != (dtype, shape):
            raise MapFileError(f"{path}: array {name!r} is {found[0]} {found[1]}, expected {dtype} {shape}")


def _check_format(path: Path, meta: dict) -> str:
    """The file's format version (one of READ_VERSIONS); MapFileError otherwise."""
    if meta.get("format") != FORMAT_NAME:
        raise MapFileError(f"{path}: not an ov3dseg map (format {meta.get('format')!r}, expected {FORMAT_NAME!r})")
    if meta.get("version") not in READ_VERSIONS:
        raise MapFileError(f"{path}: unsupported map format version {meta.get('version')!r} "
                           f"(this build reads versions {', '.join(READ_VERSIONS)})")
    return meta["version"]


def _checksum(tensors: dict[str, torch.Tensor], version: int | str = FORMAT_VERSION) -> str:
    """CRC-32 over the raw bytes of the arrays, in ``array_names(version)`` order."""
    crc = 0
    for name in array_names(version):
        crc = zlib.crc32(tensors[name].contiguous().numpy().view(np.uint8), crc)
    return f"crc32:{crc:08x}"
