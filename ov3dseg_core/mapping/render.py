"""Pictures of voxel maps (matplotlib, headless): a top-down view in true colour and in class colours, and a
query result highlighted on the map. Voxels above ``max_height`` (the ceiling) are left out so the room shows."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle


def class_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 3) float RGB in [0, 1], distinct for up to 20 classes (tab20)."""
    from matplotlib import colormaps

    return np.asarray(colormaps["tab20"].resampled(max(num_classes, 1))(np.arange(num_classes)))[:, :3]


def _top_down(ax, positions: np.ndarray, colors: np.ndarray, max_height: float, size: float) -> None:
    keep = positions[:, 2] <= max_height
    order = np.argsort(positions[keep, 2])  # higher voxels drawn last, as seen from above
    p, c = positions[keep][order], colors[keep][order]
    ax.scatter(p[:, 0], p[:, 1], c=c, s=size, marker="s", linewidths=0)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, map frame)")
    ax.set_ylabel("y (m)")


def render_semantic_map(path: str | Path, positions: np.ndarray, rgb: np.ndarray, labels: np.ndarray,
                        class_names: Sequence[str], title: str = "", max_height: float = 2.0,
                        novel: Sequence[str] = ()) -> Path:
    """Two top-down panels: the map's colours (rgb (M, 3) uint8) and its labels (M,) (-1 grey); PNG at ``path``."""
    fig = Figure(figsize=(14, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    palette = class_colors(len(class_names))
    label_rgb = np.where((labels >= 0)[:, None], palette[np.clip(labels, 0, None)], 0.8)
    for ax, colors, name in zip(fig.subplots(1, 2), (rgb / 255.0, label_rgb), ("colour", "predicted class")):
        _top_down(ax, positions, colors, max_height, size=3.0)
        ax.set_title(name)
    present = sorted(set(labels[labels >= 0].tolist()))
    fig.legend(handles=[Patch(color=palette[i], label=class_names[i] + (" (novel)" if class_names[i] in novel else ""))
                        for i in present], loc="center right", fontsize=8)
    fig.suptitle(title)
    fig.subplots_adjust(right=0.83)
    fig.savefig(path)
    return Path(path)


def render_query(path: str | Path, positions: np.ndarray, hit_positions: np.ndarray, hit_scores: np.ndarray,
                 boxes: Sequence[tuple[np.ndarray, np.ndarray]], text: str, max_height: float = 2.0) -> Path:
    """The map in grey with the voxels matching ``text`` coloured by relevancy and the object boxes (centre, size)
    outlined, top-down; PNG at ``path``."""
    fig = Figure(figsize=(7.5, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    _top_down(ax, positions, np.full((len(positions), 3), 0.75), max_height, size=3.0)
    if len(hit_positions):
        sc = ax.scatter(hit_positions[:, 0], hit_positions[:, 1], c=hit_scores, cmap="autumn_r", s=5, marker="s",
                        linewidths=0)
        fig.colorbar(sc, ax=ax, label="relevancy")
    for centre, size in boxes:
        ax.add_patch(Rectangle((centre[0] - size[0] / 2, centre[1] - size[1] / 2), size[0], size[1], fill=False,
                               edgecolor="black", linewidth=1.2))
    ax.set_title(f'query "{text}": {len(hit_positions)} voxels, {len(boxes)} objects')
    fig.savefig(path)
    return Path(path)
