"""``ov3dseg train CONFIG``: train an open-vocabulary 3D model, then evaluate it on the validation scenes (the
held-out scenes are for ``ov3dseg evaluate``, once, at the end). Configs with ``model: {type: XMask3D}`` train the
full XMask3D on scene views (training/xmask3d.py)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from ov3dseg_core.config import load_config, to_dict
from ov3dseg_core.training.config import TrainConfig, model_type


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config: a shipped name (e.g. ov3d_default) or a YAML path")
    parser.add_argument("--out", help="output folder (default: the config's out_dir)")
    parser.add_argument("--max-steps", type=int, help="override trainer.max_steps")
    parser.add_argument("--sim-scenes", type=int, help="override data.sim_scenes")
    parser.add_argument("--val-scenes", type=int, help="override data.val_scenes")
    parser.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.safetensors exists")
    parser.add_argument("--no-eval", action="store_true", help="skip the validation evaluation")
    parser.add_argument("--export", type=Path, help="also write a float16 copy of the final checkpoint here")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--init", type=Path, help="XMask3D configs: start from these weights, released ones converted "
                        "by `ov3dseg convert-checkpoint --format xmask3d` or an ov3dseg XMask3D checkpoint "
                        "(ignored when OUT/last.safetensors is resumed)")


def main(args: argparse.Namespace) -> int:
    from ov3dseg_core.eval.report import markdown_table, write_report
    from ov3dseg_core.eval.splits import load_split
    from ov3dseg_core.models.map_segmenter import MapSegmenter
    from ov3dseg_core.models.open_vocab3d import OpenVocab3D
    from ov3dseg_core.models.text import apply_template, build_text_encoder
    from ov3dseg_core.training.checkpoint import export_half
    from ov3dseg_core.training.evaluation import evaluate_scenes
    from ov3dseg_core.training.map_windows import MapWindowDataset, base_class_weights, collate_windows, fused_scenes
    from ov3dseg_core.training.scenes import training_scenes, validation_scenes
    from ov3dseg_core.training.trainer import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    if model_type(args.config) == "XMask3D":  # the full XMask3D on per-view batches of scenes
        from ov3dseg_core.training.xmask3d import train_main

        return train_main(args)
    if args.init is not None:
        print("ov3dseg train: --init is for XMask3D configs", file=sys.stderr)
        return 2
    cfg = load_config(TrainConfig, args.config)
    data = dataclasses.replace(cfg.data, **{k: v for k, v in (("sim_scenes", args.sim_scenes),
                                                              ("val_scenes", args.val_scenes)) if v is not None})
    trainer_cfg = cfg.trainer if args.max_steps is None else dataclasses.replace(cfg.trainer, max_steps=args.max_steps)
    cfg = dataclasses.replace(cfg, data=data, trainer=trainer_cfg, out_dir=str(args.out or cfg.out_dir))
    out = Path(cfg.out_dir)

    split = load_split(cfg.split)
    if cfg.method.get("type") == "Mosaic3D":  # data engine and encoder here; the returned trainer fits the decoder
        from ov3dseg_core.models.methods.mosaic3d.training import mosaic3d_trainer

        trainer = mosaic3d_trainer(cfg, split, out, resume=not args.no_resume)
    elif cfg.method:  # a distillation method (SAS, GeoGuide): no labels, 2D teacher features instead
        from ov3dseg_core.models.methods import prepare_method_training

        raw = training_scenes(cfg.data)
        setup = prepare_method_training(cfg, split, raw, fused_scenes(raw, cfg.windows, cfg.data.cache_dir),
                                        build_text_encoder(cfg.method.get("text_encoder", "minilm")))
        print(f"training {cfg.method['type']} on {len(raw)} fused scenes ({len(setup.dataset)} map windows an epoch)")
        cfg = dataclasses.replace(cfg, method=setup.method)
        trainer = Trainer(setup.model, setup.dataset, setup.collate_fn, cfg.trainer, out,
                          checkpoint_config=to_dict(cfg), vocabulary=setup.vocabulary)
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer,
                                                              setup.model.lr_lambda(cfg.trainer.max_steps))
    else:
        encoder = build_text_encoder(cfg.model.text_encoder)
        base_text = encoder.encode(apply_template(split.base, cfg.model.prompt_template))
        scenes = fused_scenes(training_scenes(cfg.data), cfg.windows, cfg.data.cache_dir)
        dataset = MapWindowDataset(scenes, split.base, encoder.encode, cfg.windows, seed=cfg.trainer.seed)
        weights = torch.from_numpy(base_class_weights(scenes, split.base, cfg.class_weight_power))
        print(f"training on {len(scenes)} fused scenes ({len(dataset)} map windows an epoch); base classes "
              f"{list(split.base)}; held out {list(split.novel)}")
        model = OpenVocab3D(cfg.model, base_text, class_weights=weights)
        trainer = Trainer(model, dataset, collate_windows, cfg.trainer, out, checkpoint_config=to_dict(cfg),
                          vocabulary=split.base)
    result = trainer.fit(resume=not args.no_resume)
    print(f"checkpoint: {result.checkpoint} (step {result.step})")
    if args.export:
        print(f"exported float16 checkpoint: {export_half(result.checkpoint, args.export)}")
    if not args.no_eval and trainer.rank == 0 and cfg.data.val_scenes:
        segmenter = MapSegmenter.from_checkpoint(result.checkpoint)
        report = evaluate_scenes(segmenter, validation_scenes(cfg.data), split, cfg.windows.voxel_size)
        write_report(report, out / "eval")
        print(markdown_table(report))
    return 0
