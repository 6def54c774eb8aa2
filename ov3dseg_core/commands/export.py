"""``ov3dseg export MAP --format ply|pcd|mesh|openlex3d [--out PATH]``: a saved map as files other tools read."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ov3dseg_core.mapping.exports import (OPENLEX3D_FILES, voxel_mesh, voxel_points, write_mesh_ply,
                                          write_openlex3d, write_pcd)
from ov3dseg_core.mapping.map_file import MapFileError, export_ply, load_map

SUFFIXES = {"ply": ".ply", "pcd": ".pcd", "mesh": "_mesh.ply", "openlex3d": "_openlex3d"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map", help="map file (.safetensors, as ~/save_map and --save-map write it)")
    parser.add_argument("--format", required=True, choices=sorted(SUFFIXES),
                        help="ply / pcd: one point per voxel (x y z, colour, label, score, instance); mesh: PLY of the "
                             "voxels' exposed cube faces with their colours; openlex3d: a folder with "
                             f"{', '.join(OPENLEX3D_FILES)} for the OpenLex3D benchmark")
    parser.add_argument("--out", help="output file (ply, pcd) or folder (openlex3d); default: next to MAP")
    parser.add_argument("--text-encoder", default="minilm",
                        help="openlex3d on a label-only map: encoder of the label names (default: minilm)")
    parser.add_argument("--template", default="{}", help="prompt template of the label names (default: '{}')")


def main(args: argparse.Namespace) -> int:
    try:
        voxel_map = load_map(args.map)
    except (FileNotFoundError, MapFileError) as exc:
        print(f"ov3dseg export: {exc}", file=sys.stderr)
        return 1
    path = Path(args.out or Path(args.map).with_suffix("").as_posix() + SUFFIXES[args.format])
    if args.format == "ply":
        export_ply(voxel_map, path)
        print(f"wrote {len(voxel_map)} voxels to {path}")
    elif args.format == "pcd":
        write_pcd(path, voxel_points(voxel_map))
        print(f"wrote {len(voxel_map)} voxels to {path}")
    elif args.format == "mesh":
        vertices, colors, triangles = voxel_mesh(voxel_map)
        write_mesh_ply(path, vertices, colors, triangles)
        print(f"wrote {len(triangles)} triangles ({len(vertices)} vertices) to {path}")
    else:
        try:
            points, rows = write_openlex3d(path, voxel_map, _label_embeddings(voxel_map, args))
        except ValueError as exc:
            print(f"ov3dseg export: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {points} points and {rows} embeddings to {path}/ ({', '.join(OPENLEX3D_FILES)})")
    return 0


def _label_embeddings(voxel_map, args: argparse.Namespace):
    """Embeddings of a label-only map's label names (None for feature maps or maps without label names)."""
    if voxel_map.config.feature_dim > 0 or not voxel_map.label_names:
        return None
    from ov3dseg_core.models.text import apply_template, build_text_encoder
    encoder = build_text_encoder(args.text_encoder)
    return encoder.encode(apply_template(voxel_map.label_names, args.template)).cpu().numpy()
