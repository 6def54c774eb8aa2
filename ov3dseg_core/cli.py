"""The ``ov3dseg`` command: one entry point, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported only
when their subcommand runs, so ``ov3dseg --help`` is instant and ROS-free machines can run the core commands;
subcommands under ``ov3dseg_ros`` need rclpy and the built interfaces.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fuse-sample": ("ov3dseg_core.commands.fuse_sample", "fuse the living-room sample RGB-D frames into a map (PLY + summary)"),
    "record-sample": ("ov3dseg_core.commands.record_sample", "write the living-room sample frames as a ROS 2 MCAP bag"),
    "run": ("ov3dseg_ros.commands.run", "start the ov3dseg node graph in this process (as mapping.launch.py)"),
    "replay": ("ov3dseg_ros.commands.replay", "replay a ROS 2 bag into the node graph with /clock"),
    "query": ("ov3dseg_ros.commands.query", "call /query on a running graph and print the hits"),
    "sim": ("ov3dseg_core.commands.sim", "generate a labelled synthetic indoor scene as a bag and/or dataset folder"),
    "dataset-to-bag": ("ov3dseg_core.commands.dataset_to_bag", "convert a dataset scene (ScanNet, TUM, Redwood, ...) to a bag"),
    "eval": ("ov3dseg_core.commands.eval", "evaluate a bag (through the node graph) or a dataset: mIoU, hIoU, plots"),
    "model-info": ("ov3dseg_core.commands.model_info", "build a model config with random weights and count parameters"),
    "train": ("ov3dseg_core.commands.train", "train a model from a config"),
    "evaluate": ("ov3dseg_core.commands.evaluate", "evaluate a checkpoint offline on a dataset split"),
    "convert-checkpoint": ("ov3dseg_core.commands.convert_checkpoint", "convert a released XMask3D / Mosaic3D checkpoint to safetensors"),
    "calibrate": ("ov3dseg_core.commands.calibrate",
                  "calibrate a model's labelling margin and /query decision on validation scenes (stored in it)"),
    "demo": ("ov3dseg_ros.commands.demo", "the end-to-end demo: simulate, replay, query, evaluate, render"),
    "export": ("ov3dseg_core.commands.export", "export a saved map as PLY, PCD or OpenLex3D prediction files"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ov3dseg", description="Open-vocabulary 3D semantic mapping for ROS 2.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _build_parser()
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}")
        parser.parse_args(argv)  # --help exits here
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name.startswith(exc.name) or exc.name.split(".")[0] in ("rclpy", "ov3dseg_ros")):
            print(f"ov3dseg {name}: not available here ({exc}). "
                  "ROS commands need rclpy and the built interfaces: run scripts/setup.sh, then . .venv/bin/activate",
                  file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"ov3dseg {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
