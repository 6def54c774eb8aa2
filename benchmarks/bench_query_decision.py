"""Query decision benchmark: held-out simulated scenes (seeds from 100000, the room types cycled), each evaluated
through the node graph as ``ov3dseg eval BAG --split S --oracle`` and ``... --model M`` do; the query benchmark
(default /query for every class of the split: present recall, absent false alarm, top-1 precision) is pooled over
the scenes and printed as a table with the issue's targets.

    python benchmarks/bench_query_decision.py [--seeds 100000-100004] [--model default] [--frames 24]
        [--room-types bedroom,office,...] [--out out/bench_query] [--no-oracle | --no-model]

Writes OUT/query_benchmark.json (per scene and class records, pooled summaries) and OUT/<seed>_{oracle,model}/
(the eval reports); bags are cached in OUT/scenes/.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ov3dseg_core.commands.calibrate import parse_seeds
from ov3dseg_core.commands.eval import evaluate_bag
from ov3dseg_core.eval.query_benchmark import SUMMARY_KEYS, summarize
from ov3dseg_core.eval.splits import load_split
from ov3dseg_core.sim.layout import ROOM_TYPES

TARGETS = {"oracle": {"present_recall": (">=", 0.95), "absent_false_alarm": ("<=", 0.05),
                      "top1_precision": (">=", 0.90)},
           "model": {"present_recall": (">=", 0.80), "absent_false_alarm": ("<=", 0.25),
                     "top1_precision": (">=", 0.60)}}
"""Issue 9's targets on held-out simulated scenes."""


def scene_bag(seed: int, room_type: str, frames: int, out: Path) -> Path:
    """The cached MCAP bag of held-out scene ``seed`` (``room_type``, ``frames`` 640x480 frames, no LiDAR)."""
    from ov3dseg_core.sim.export import write_bag
    from ov3dseg_core.sim.world import SimConfig, generate_scene

    bag = out / f"sim_{seed}_{room_type}_f{frames}.mcap"
    if not (bag / "metadata.yaml").exists():
        write_bag(generate_scene(seed, room_type, config=SimConfig(frames=frames, use_lidar=False)), bag, lidar=False)
    return bag


def meets(summary: dict, mode: str) -> str:
    """'yes' / 'no' per target, in SUMMARY_KEYS order."""
    ok = []
    for key in SUMMARY_KEYS:
        op, bound = TARGETS[mode][key]
        value = summary[key]
        ok.append("n/a" if value is None else "yes" if (value >= bound if op == ">=" else value <= bound) else "no")
    return ", ".join(ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="100000-100004", help="held-out seeds, A-B or A,B,C (default %(default)s)")
    parser.add_argument("--room-types", default=",".join(ROOM_TYPES), help="cycled over the seeds")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--model", default="default", help="checkpoint or 'default'")
    parser.add_argument("--split", default="sim_b15n4")
    parser.add_argument("--out", type=Path, default=Path("out/bench_query"))
    parser.add_argument("--no-oracle", action="store_true")
    parser.add_argument("--no-model", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))  # apart from other graphs on this machine

    seeds, room_types = parse_seeds(args.seeds), args.room_types.split(",")
    split = load_split(args.split)
    modes = [m for m, skip in (("oracle", args.no_oracle), ("model", args.no_model)) if not skip]
    records: dict[str, list[dict]] = {m: [] for m in modes}
    start = time.perf_counter()
    for i, seed in enumerate(seeds):
        room_type = room_types[i % len(room_types)]
        bag = scene_bag(seed, room_type, args.frames, args.out / "scenes")
        for mode in modes:
            out = args.out / f"{seed}_{mode}"
            out.mkdir(parents=True, exist_ok=True)
            _, sections = evaluate_bag(bag, {"lidar_topics": []}, mode == "oracle", split, out, args.model)
            query = sections["query"]
            records[mode] += [{"seed": seed, "room_type": room_type, "class": name, **r}
                              for name, r in query["per_class"].items()]
            print(f"{seed} {room_type:<12} {mode:<6} " + ", ".join(
                f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in summarize(query["per_class"].values()).items()),
                flush=True)
    pooled = {m: summarize(records[m]) for m in modes}
    result = {"seeds": seeds, "room_types": [room_types[i % len(room_types)] for i in range(len(seeds))],
              "frames": args.frames, "model": args.model, "split": split.name, "pooled": pooled, "records": records,
              "targets": TARGETS, "wall_s": round(time.perf_counter() - start, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "query_benchmark.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(f"\nQuery decision, {len(seeds)} held-out scenes ({', '.join(sorted(set(result['room_types'])))}), "
          f"{args.frames} frames, split {split.name}, model {args.model}, load average {os.getloadavg()[0]:.1f}\n")
    print("| labels | present | absent | present recall | absent false alarm | top-1 precision | targets met |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for mode in modes:
        s, rs = pooled[mode], records[mode]
        values = " | ".join("n/a" if s[k] is None else f"{s[k]:.2f}" for k in SUMMARY_KEYS)
        print(f"| {mode} | {sum(r['present'] for r in rs)} | {sum(not r['present'] for r in rs)} | {values} | "
              f"{meets(s, mode)} |")
    print(f"\n{args.out / 'query_benchmark.json'}")


if __name__ == "__main__":
    main()
