"""``ov3dseg model-info CONFIG [--json]``: build a model config (``model:``, e.g. XMask3D) or a method config
(``method:``: SAS, GeoGuide, Mosaic3D) on the CPU (random weights unless the config names local weights) and print
its parameter count per component."""
from __future__ import annotations

import argparse
import json
import sys

from ov3dseg_core.config import ConfigError, load_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a shipped config name (e.g. xmask3d_scannet) or a YAML path")
    parser.add_argument("--json", action="store_true", help="print {component: parameter count} as JSON")


def parameter_counts(model) -> dict[str, int]:
    """{component: parameters} from the model's ``parameter_counts()``, else just the total."""
    if hasattr(model, "parameter_counts"):
        return dict(model.parameter_counts())
    return {"total": sum(p.numel() for p in model.parameters())}


def _build(data: dict):
    """The config's method (SAS, GeoGuide, Mosaic3D: ``method:``, a placeholder one-class vocabulary) or model
    (``model:``, e.g. XMask3D) with random weights."""
    if isinstance(data.get("method"), dict):
        import torch

        from ov3dseg_core.models.methods import method_class, method_config

        config = method_config(data["method"])
        return method_class(data["method"])(config, torch.ones(1, config.text_dim))
    import ov3dseg_core.models.xmask3d  # noqa: F401  (registers the "model" group)
    from ov3dseg_core.registry import REGISTRY

    return REGISTRY.build("model", data["model"])


def main(args: argparse.Namespace) -> int:
    try:
        data = load_yaml(args.config)
    except ConfigError as exc:
        print(f"ov3dseg model-info: {exc}", file=sys.stderr)
        return 2
    section = next((data[k] for k in ("method", "model") if isinstance(data.get(k), dict) and "type" in data[k]), None)
    if section is None:
        print(f"ov3dseg model-info: {args.config}: needs a 'method' or 'model' section with a 'type'", file=sys.stderr)
        return 2
    counts = parameter_counts(_build(data))
    if args.json:
        print(json.dumps(counts))
        return 0
    width = max(len(k) for k in counts)
    print(f"{section['type']} ({args.config})")
    for name, count in counts.items():
        print(f"  {name:<{width}}  {count:>13,d}  ({count / 1e6:8.2f} M)")
    return 0
