"""``ov3dseg convert-checkpoint SRC --format xmask3d|mosaic3d --out FILE.safetensors``: rewrite a released XMask3D
(``<split>.pth.tar``) or Mosaic3D (Lightning ``.ckpt``) checkpoint for our 3D modules and say what was converted,
what was skipped and why. The source is read without running pickled code (see models/backbones/tensor_pickle.py)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="released checkpoint (.pth.tar / .pth / .ckpt)")
    parser.add_argument("--format", required=True, choices=("xmask3d", "mosaic3d"), help="which project wrote SRC")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    parser.add_argument("--conditions",
                        help="mosaic3d: comma-separated PPT condition names in training order (default: the "
                             "Mosaic3D data config with as many conditions as the checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the conversion report as JSON")


def main(args: argparse.Namespace) -> int:
    from ov3dseg_core.models.backbones.checkpoint import CheckpointError
    from ov3dseg_core.models.backbones.convert import CONVERTERS, save_converted

    if args.out.suffix != ".safetensors":
        print(f"ov3dseg convert-checkpoint: --out must end in .safetensors, got {args.out}", file=sys.stderr)
        return 2
    if args.conditions and args.format != "mosaic3d":
        print("ov3dseg convert-checkpoint: --conditions applies to --format mosaic3d only", file=sys.stderr)
        return 2
    options = {"conditions": args.conditions.split(",")} if args.conditions else {}
    try:
        weights = CONVERTERS[args.format](args.src, **options)
    except CheckpointError as exc:
        print(f"ov3dseg convert-checkpoint: {exc}", file=sys.stderr)
        return 1
    save_converted(args.out, weights)
    report = weights.report
    if args.json:
        print(json.dumps({**asdict(report), "out": str(args.out)}, indent=2))
        return 0
    print(f"{args.format} checkpoint {report.source} -> {args.out}")
    print("converted:")
    for part in report.parts:
        print(f"  {part.name}: {part.source}* -> {part.target}* ({part.tensors} tensors, {part.parameters:,} "
              f"parameters; {part.transform})")
    print("skipped:")
    for group in report.skipped:
        print(f"  {group.prefix}* ({group.tensors} tensors): {group.reason}")
    if report.skipped_objects:
        print(f"  pickled objects not loaded (no code run): {', '.join(report.skipped_objects)}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"model config for these weights: {json.dumps(report.model_config)}")
    return 0
