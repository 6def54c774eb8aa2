"""Label conventions shared by the map, the datasets, the simulator and the evaluation."""
from __future__ import annotations

IGNORE_LABEL = -1
"""Class id meaning "no label / ignore" in the core (int32 arrays)."""

UNLABELLED_U16 = 65535
"""Class id meaning "no label" in 16UC1 label images on the wire."""

SCANNET20 = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub",
    "other furniture",
]
"""The ScanNet-20 benchmark categories, ids 0..19 in this order."""
