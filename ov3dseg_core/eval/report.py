"""Write an EvalReport: ``report.json`` (fractions in [0, 1], null = undefined), ``report.md`` (a table in percent),
``per_class_iou.png`` (bars coloured base / novel) and ``confusion.png`` (row-normalised confusion matrix).

Plots use matplotlib's Agg canvas directly (no pyplot, no display needed).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ov3dseg_core.eval.evaluate import EvalReport

BASE_COLOR = "#1f77b4"
NOVEL_COLOR = "#ff7f0e"
PLAIN_COLOR = "#7f7f7f"
_MAX_TICK_LABELS = 60  # above this many classes the confusion plot drops its tick labels


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100.0 * value:.1f}"


def _group(report: EvalReport, name: str) -> str:
    if report.split is None:
        return ""
    return "base" if name in report.split.base else "novel"


def markdown_table(report: EvalReport) -> str:
    """Summary line(s) plus a per-class table; values in percent, n/a = class absent from the ground truth."""
    m = report.metrics
    summary = [("mIoU", m.miou), ("mAcc", m.macc), ("f-mIoU", m.fmiou), ("f-mAcc", m.fmacc)]
    if report.split is not None:
        summary += [("base mIoU", m.base_miou), ("novel mIoU", m.novel_miou), ("hIoU", m.hiou)]
    lines = ["| " + " | ".join(k for k, _ in summary) + " |", "|" + "---:|" * len(summary),
             "| " + " | ".join(_pct(v) for _, v in summary) + " |", ""]
    extras = [f"points: {report.num_points}"]
    if report.split is not None:
        extras.insert(0, f"split: {report.split.name}")
    if report.coverage is not None:
        extras.append(f"coverage: {_pct(report.coverage)} %")
    if report.voxel_size is not None:
        extras.append(f"voxel size: {report.voxel_size:g} m")
    if report.voxel_purity is not None:
        extras.append(f"voxel purity (accuracy bound): {_pct(report.voxel_purity)} %")
    lines += [", ".join(extras), "", "| class | set | IoU (%) | Acc (%) | points |", "|---|---|---:|---:|---:|"]
    for i, name in enumerate(report.class_names):
        lines.append(f"| {name} | {_group(report, name) or '-'} | {_pct(float(m.iou[i]))} | {_pct(float(m.acc[i]))} "
                     f"| {int(m.gt_points[i])} |")
    return "\n".join(lines) + "\n"


def plot_per_class_iou(report: EvalReport, path: str | Path) -> None:
    """Bar chart of per-class IoU (%), coloured by split group; absent classes are marked n/a."""
    names = report.class_names
    iou = report.metrics.iou
    colors = [{"base": BASE_COLOR, "novel": NOVEL_COLOR}.get(_group(report, n), PLAIN_COLOR) for n in names]
    fig = Figure(figsize=(max(6.0, 0.3 * len(names) + 2.0), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, np.nan_to_num(iou * 100.0), color=colors)
    for i in np.flatnonzero(np.isnan(iou)):
        ax.text(i, 1.0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=90, fontsize=7 if len(names) <= _MAX_TICK_LABELS else 3)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    title = f"per-class IoU, mIoU {_pct(report.metrics.miou)} %"
    if report.split is not None:
        title += f" ({report.split.name}: hIoU {_pct(report.metrics.hiou)} %)"
        ax.legend(handles=[Patch(color=BASE_COLOR, label="base"), Patch(color=NOVEL_COLOR, label="novel")])
    ax.set_title(title)
    fig.savefig(path, dpi=120)


def plot_confusion(report: EvalReport, path: str | Path) -> None:
    """Confusion matrix normalised per ground-truth row (fractions); the last column is "missed" (predicted none)."""
    counts = report.confusion.astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(report.class_names)
    size = min(max(6.0, 0.3 * n + 2.0), 30.0)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of ground-truth points")
    if n <= _MAX_TICK_LABELS:
        ax.set_xticks(np.arange(n + 1), [*report.class_names, "missed"], rotation=90, fontsize=7)
        ax.set_yticks(np.arange(n), report.class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion (row-normalised)")
    fig.savefig(path, dpi=120)


def model_entry(name: str, kind: str, passes: Mapping[str, int]) -> dict[str, Any]:
    """The report's "model" block: {"name": the checkpoint as given, "kind": "3d" or "2d+3d", "stages": {"2d":
    2D-branch runs (key frames used), "3d": 3D-branch runs}}."""
    return {"name": name, "kind": kind, "stages": {"2d": int(passes.get("2d", 0)), "3d": int(passes.get("3d", 0))}}


def markdown_model(entry: Mapping[str, Any]) -> str:
    """One markdown line for a ``model_entry``."""
    stages = entry["stages"]
    return (f"\nModel `{entry['name']}` (kind {entry['kind']}): 2D branch on {stages['2d']} key frames, "
            f"3D branch {stages['3d']} runs.\n")


def write_report(report: EvalReport, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, per_class_iou.png and confusion.png into ``out_dir`` (created); returns paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md",
             "per_class_iou": out / "per_class_iou.png", "confusion": out / "confusion.png"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_table(report), encoding="utf-8")
    plot_per_class_iou(report, paths["per_class_iou"])
    plot_confusion(report, paths["confusion"])
    return paths
