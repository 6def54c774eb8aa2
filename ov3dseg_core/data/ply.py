"""Vertex-element PLY files (ASCII and binary) <-> NumPy structured arrays, vectorised.

Reads the ``vertex`` element of any PLY whose elements before it have no list properties (faces after the
vertices, as in ScanNet meshes, are skipped). Writes binary little-endian PLY.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_NUMPY_TO_PLY = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
                 "f4": "float", "f8": "double"}


class PlyError(ValueError):
    """A PLY file this reader cannot parse (bad header, unsupported layout, truncated data)."""


def _parse_header(f, path) -> tuple[str, list[tuple[str, int, list[tuple[str, str]], bool]]]:
    if f.readline().strip() != b"ply":
        raise PlyError(f"{path}: not a PLY file (missing 'ply' magic)")
    fmt, elements = "", []
    while True:
        line = f.readline()
        if not line:
            raise PlyError(f"{path}: PLY header has no end_header")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            return fmt, elements
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), [], False))
        elif words[0] == "property":
            if not elements:
                raise PlyError(f"{path}: property before any element")
            name, count, props, has_list = elements[-1]
            if words[1] == "list":
                elements[-1] = (name, count, props + [(words[-1], "list")], True)
            else:
                if words[1] not in _PLY_TYPES:
                    raise PlyError(f"{path}: unknown PLY property type {words[1]!r}")
                props.append((words[2], _PLY_TYPES[words[1]]))


def read_ply_vertices(path: str | Path) -> np.ndarray:
    """The vertex element of a PLY file as a structured array (N,), native field names and dtypes."""
    path = Path(path)
    with open(path, "rb") as f:
        fmt, elements = _parse_header(f, path)
        if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
            raise PlyError(f"{path}: unsupported PLY format {fmt!r}")
        order = "<" if fmt == "binary_little_endian" else ">"
        skip_bytes, skip_lines = 0, 0
        for name, count, props, has_list in elements:
            if name == "vertex":
                if has_list:
                    raise PlyError(f"{path}: list properties in the vertex element are not supported")
                dtype = np.dtype([(p, (order if fmt != "ascii" else "") + t) for p, t in props])
                break
            if has_list:
                raise PlyError(f"{path}: element {name!r} with list properties precedes the vertices")
            skip_bytes += count * np.dtype([(p, t) for p, t in props]).itemsize
            skip_lines += count
        else:
            raise PlyError(f"{path}: no vertex element")
        if fmt == "ascii":
            for _ in range(skip_lines):
                f.readline()
            lines = [f.readline() for _ in range(count)]
            if len(lines) < count or not lines[-1]:
                raise PlyError(f"{path}: truncated ASCII vertex data")
            table = np.array(b" ".join(lines).split(), dtype=np.float64)
            if table.size != count * len(props):
                raise PlyError(f"{path}: ASCII vertex rows do not have {len(props)} values each")
            table = table.reshape(count, len(props))
            out = np.empty(count, dtype=dtype)
            for i, (p, _) in enumerate(props):
                out[p] = table[:, i]
            return out
        f.seek(skip_bytes, os.SEEK_CUR)
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise PlyError(f"{path}: truncated vertex data ({len(data)} of {count * dtype.itemsize} bytes)")
        return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="))


def write_ply_vertices(path: str | Path, vertices: np.ndarray) -> None:
    """Write a structured array (N,) as the vertex element of a binary little-endian PLY (fields in order)."""
    if vertices.dtype.names is None:
        raise ValueError("write_ply_vertices needs a structured array with named fields")
    props = []
    for name in vertices.dtype.names:
        code = vertices.dtype[name].base.str[1:]
        if code not in _NUMPY_TO_PLY or vertices.dtype[name].shape:
            raise ValueError(f"field {name!r} of dtype {vertices.dtype[name]} has no PLY scalar type")
        props.append(f"property {_NUMPY_TO_PLY[code]} {name}")
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {len(vertices)}", *props,
                        "end_header"]) + "\n"
    little = np.dtype([(n, vertices.dtype[n].base.newbyteorder("<")) for n in vertices.dtype.names])
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(vertices.astype(little)).tobytes())
