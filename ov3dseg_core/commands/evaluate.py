"""``ov3dseg evaluate CONFIG CHECKPOINT``: score a trained model on the config's held-out (or validation) scenes
(base, novel, hIoU for the config's split), through the same map -> model -> features path the live mapper uses.
XMask3D configs are scored through the model's own 2D+3D ``predict`` on each scene's views, per point, in one or
more modes (3d, 2d, fused, ensemble); reports go to OUT/<mode>/."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config (shipped name or YAML path): split and held-out scenes")
    parser.add_argument("checkpoint", type=Path, help="model checkpoint (.safetensors) written by ov3dseg train")
    parser.add_argument("--out", type=Path, default=Path("out/evaluate"), help="report folder")
    parser.add_argument("--split", help="override the config's split")
    parser.add_argument("--heldout-scenes", type=int, help="override data.heldout_scenes")
    parser.add_argument("--validation", action="store_true",
                        help="score the validation scenes (for tuning) instead of the held-out ones")
    parser.add_argument("--device", default="cpu", help="torch device for the model")
    parser.add_argument("--mode", action="append", choices=("3d", "2d", "fused", "ensemble"),
                        help="XMask3D only: prediction mode(s) to score (repeatable; default: the config's "
                             "inference.mode)")


def main(args: argparse.Namespace) -> int:
    from ov3dseg_core.config import load_config
    from ov3dseg_core.eval.report import markdown_table, write_report
    from ov3dseg_core.eval.splits import load_split
    from ov3dseg_core.models.map_segmenter import MapSegmenter
    from ov3dseg_core.training.config import TrainConfig, model_type
    from ov3dseg_core.training.evaluation import evaluate_scenes
    from ov3dseg_core.training.scenes import heldout_scenes, validation_scenes

    if model_type(args.config) == "XMask3D":
        return evaluate_xmask3d(args)
    cfg = load_config(TrainConfig, args.config)
    if args.heldout_scenes is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, heldout_scenes=args.heldout_scenes))
    split = load_split(args.split or cfg.split)
    segmenter = MapSegmenter.from_checkpoint(args.checkpoint, device=args.device)
    scenes = validation_scenes(cfg.data) if args.validation else heldout_scenes(cfg.data)
    report = evaluate_scenes(segmenter, scenes, split, cfg.windows.voxel_size)
    paths = write_report(report, args.out)
    print(markdown_table(report))
    print(f"report: {paths}")
    if type(segmenter.model).__name__ == "Mosaic3D":  # its instance decoder: mAP / AP50 / AP25 on the same scenes
        from ov3dseg_core.eval.instances import markdown_instances
        from ov3dseg_core.models.methods.mosaic3d.instance_eval import instance_report

        instances = instance_report(segmenter, scenes, split, cfg.windows.voxel_size, cfg.data.cache_dir, args.out)
        metrics = {k: v for k, v in instances.items() if k != "seconds_per_scene"}
        print("instances (3D only, open-vocabulary labels):\n"
              + markdown_instances(metrics, {"s/scene": f"{instances['seconds_per_scene']:.2f}"}), end="")
    return 0


def evaluate_xmask3d(args: argparse.Namespace) -> int:
    """Score an XMask3D checkpoint per mode through ``training.xmask3d.evaluate_views``."""
    from ov3dseg_core.eval.report import markdown_table, write_report
    from ov3dseg_core.eval.splits import load_split
    from ov3dseg_core.training.scenes import heldout_scenes, validation_scenes
    from ov3dseg_core.training.xmask3d import evaluate_views, load_train_config, load_xmask3d, model_split

    cfg = load_train_config(args.config)
    if args.heldout_scenes is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, heldout_scenes=args.heldout_scenes))
    model = load_xmask3d(args.checkpoint, device=args.device)
    split = load_split(args.split) if args.split else model_split(model)
    scenes = validation_scenes(cfg.data) if args.validation else heldout_scenes(cfg.data)
    for mode in args.mode or [model.cfg.inference.mode]:
        report = evaluate_views(model, scenes, split, mode, cfg.views.image_size, cfg.views.frame_stride)
        paths = write_report(report, args.out / mode)
        print(f"mode {mode}:")
        print(markdown_table(report))
        print(f"report: {paths}")
    return 0
