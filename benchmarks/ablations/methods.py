"""SAS and GeoGuide ablations on the simulated validation scenes: short ``ov3dseg train`` runs of sas_tiny /
geoguide_tiny with one setting changed each, scored by the training command's own validation evaluation (never the
held-out scenes), one markdown row per run and the load average before and after it.

    python benchmarks/ablations/methods.py [--only sas|geoguide] [--sas-steps 200] [--geoguide-steps 100] [--out DIR]

SAS rows: the student trained on each fusion rule's target (add, linear, capability; TESD off), and capability with
TESD switched on for the last 30 % of the steps. GeoGuide rows: all modules, then USD's learned weights off (plain
superpoint mean pooling), IMR off (lambda_mask 0), IIRC off (lambda_sim 0).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.config import load_config, to_dict
from ov3dseg_core.training.config import TrainConfig

NEVER = 10**9


def ablations(sas_steps: int, geoguide_steps: int) -> dict[str, tuple[str, int, dict]]:
    """name -> (base config, steps, method overrides)."""
    tesd = int(0.7 * sas_steps)
    return {
        "SAS add fusion": ("sas_tiny", sas_steps, {"fusion": "add", "tesd_start": NEVER}),
        "SAS linear fusion": ("sas_tiny", sas_steps, {"fusion": "linear", "tesd_start": NEVER}),
        "SAS capability fusion": ("sas_tiny", sas_steps, {"fusion": "capability", "tesd_start": NEVER}),
        f"SAS capability fusion + TESD from step {tesd}": ("sas_tiny", sas_steps,
                                                           {"fusion": "capability", "tesd_start": tesd}),
        "GeoGuide (USD + IMR + IIRC)": ("geoguide_tiny", geoguide_steps, {}),
        "GeoGuide w/o USD weights (mean pooling)": ("geoguide_tiny", geoguide_steps, {"learned_reliability": False}),
        "GeoGuide w/o IMR": ("geoguide_tiny", geoguide_steps, {"lambda_mask": 0.0}),
        "GeoGuide w/o IIRC": ("geoguide_tiny", geoguide_steps, {"lambda_sim": 0.0}),
    }


def run(name: str, base: str, steps: int, overrides: dict, out: Path) -> dict:
    """Train ``base`` with ``overrides`` for ``steps`` steps (fresh), return its validation report."""
    cfg = to_dict(load_config(TrainConfig, base))
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    cfg["method"] = {**cfg["method"], **overrides}
    cfg["out_dir"] = str(out / slug)
    path = out / f"{slug}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if cli_main(["train", str(path), "--max-steps", str(steps), "--threads", "1", "--no-resume"]) != 0:
        raise RuntimeError(f"{name}: training failed")
    return json.loads((out / slug / "eval" / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("sas", "geoguide"))
    parser.add_argument("--sas-steps", type=int, default=200)
    parser.add_argument("--geoguide-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("out/ablations"))
    args = parser.parse_args()
    rows = []
    for name, (base, steps, overrides) in ablations(args.sas_steps, args.geoguide_steps).items():
        if args.only and not base.startswith(args.only):
            continue
        load, t0 = os.getloadavg()[0], time.perf_counter()
        report = run(name, base, steps, overrides, args.out)
        rows.append(f"| {name} | {steps} | {100 * report['miou']:.1f} | {100 * report['base_miou']:.1f} | "
                    f"{100 * report['novel_miou']:.1f} | {100 * report['hiou']:.1f} | "
                    f"{(time.perf_counter() - t0) / 60:.0f} min, load {load:.1f} -> {os.getloadavg()[0]:.1f} |")
        print(rows[-1], flush=True)
    print("| run | steps | mIoU | base mIoU | novel mIoU | hIoU | time, load average |")
    print("|---|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
