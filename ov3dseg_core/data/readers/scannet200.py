"""ScanNet label spaces: ScanNet-20 (NYU40 subset) and ScanNet200, with raw-id -> class-index look-up tables.

Facts from the ScanNet benchmark definitions (ScanNet's ``scannet200_constants``, as used by Pointcept):
ScanNet-20 keeps 20 of the NYU40 ids; ScanNet200 keeps 200 of the raw ScanNet category ids (the ``id`` column of
``scannetv2-labels.combined.tsv``). Raw ids -> NYU40 needs that TSV, which ships with ScanNet: see
``read_label_tsv``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ov3dseg_core.labels import IGNORE_LABEL

NYU40_IDS_20 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
"""NYU40 id of each ScanNet-20 class, in the order of ov3dseg_core.labels.SCANNET20."""

RAW_IDS_200 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 26, 27, 28, 29, 31, 32, 33, 34,
    35, 36, 38, 39, 40, 41, 42, 44, 45, 46, 47, 48, 49, 50, 51, 52, 54, 55, 56, 57, 58, 59, 62, 63, 64, 65, 66, 67,
    68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 82, 84, 86, 87, 88, 89, 90, 93, 95, 96, 97, 98, 99, 100,
    101, 102, 103, 104, 105, 106, 107, 110, 112, 115, 116, 118, 120, 121, 122, 125, 128, 130, 131, 132, 134, 136,
    138, 139, 140, 141, 145, 148, 154, 155, 156, 157, 159, 161, 163, 165, 166, 168, 169, 170, 177, 180, 185, 188,
    191, 193, 195, 202, 208, 213, 214, 221, 229, 230, 232, 233, 242, 250, 261, 264, 276, 283, 286, 300, 304, 312,
    323, 325, 331, 342, 356, 370, 392, 395, 399, 408, 417, 488, 540, 562, 570, 572, 581, 609, 748, 776, 1156, 1163,
    1164, 1165, 1166, 1167, 1168, 1169, 1170, 1171, 1172, 1173, 1174, 1175, 1176, 1178, 1179, 1180, 1181, 1182,
    1183, 1184, 1185, 1186, 1187, 1188, 1189, 1190, 1191,
)
"""Raw ScanNet category id of each ScanNet200 class, in the order of SCANNET200."""

SCANNET200 = [
    "wall", "chair", "floor", "table", "door", "couch", "cabinet", "shelf", "desk", "office chair", "bed", "pillow",
    "sink", "picture", "window", "toilet", "bookshelf", "monitor", "curtain", "book", "armchair", "coffee table",
    "box", "refrigerator", "lamp", "kitchen cabinet", "towel", "clothes", "tv", "nightstand", "counter", "dresser",
    "stool", "cushion", "plant", "ceiling", "bathtub", "end table", "dining table", "keyboard", "bag", "backpack",
    "toilet paper", "printer", "tv stand", "whiteboard", "blanket", "shower curtain", "trash can", "closet",
    "stairs", "microwave", "stove", "shoe", "computer tower", "bottle", "bin", "ottoman", "bench", "board",
    "washing machine", "mirror", "copier", "basket", "sofa chair", "file cabinet", "fan", "laptop", "shower",
    "paper", "person", "paper towel dispenser", "oven", "blinds", "rack", "plate", "blackboard", "piano",
    "suitcase", "rail", "radiator", "recycling bin", "container", "wardrobe", "soap dispenser", "telephone",
    "bucket", "clock", "stand", "light", "laundry basket", "pipe", "clothes dryer", "guitar",
    "toilet paper holder", "seat", "speaker", "column", "bicycle", "ladder", "bathroom stall", "shower wall", "cup",
    "jacket", "storage bin", "coffee maker", "dishwasher", "paper towel roll", "machine", "mat", "windowsill",
    "bar", "toaster", "bulletin board", "ironing board", "fireplace", "soap dish", "kitchen counter", "doorframe",
    "toilet paper dispenser", "mini fridge", "fire extinguisher", "ball", "hat", "shower curtain rod",
    "water cooler", "paper cutter", "tray", "shower door", "pillar", "ledge", "toaster oven", "mouse",
    "toilet seat cover dispenser", "furniture", "cart", "storage container", "scale", "tissue box", "light switch",
    "crate", "power outlet", "decoration", "sign", "projector", "closet door", "vacuum cleaner", "candle",
    "plunger", "stuffed animal", "headphones", "dish rack", "broom", "guitar case", "range hood", "dustpan",
    "hair dryer", "water bottle", "handicap bar", "purse", "vent", "shower floor", "water pitcher", "mailbox",
    "bowl", "paper bag", "alarm clock", "music stand", "projector screen", "divider", "laundry detergent",
    "bathroom counter", "object", "bathroom vanity", "closet wall", "laundry hamper", "bathroom stall door",
    "ceiling light", "trash bin", "dumbbell", "stair rail", "tube", "bathroom cabinet", "cd case", "closet rod",
    "coffee kettle", "structure", "shower head", "keyboard piano", "case of water bottles", "coat rack",
    "storage organizer", "folded chair", "fire alarm", "power strip", "calendar", "poster", "potted plant",
    "luggage", "mattress",
]
"""The ScanNet200 benchmark categories, ids 0..199 in this order."""


def _lookup_table(valid_ids: tuple[int, ...]) -> np.ndarray:
    table = np.full(max(valid_ids) + 1, IGNORE_LABEL, dtype=np.int32)
    table[list(valid_ids)] = np.arange(len(valid_ids), dtype=np.int32)
    return table


_NYU40_TO_20 = _lookup_table(NYU40_IDS_20)
_RAW_TO_200 = _lookup_table(RAW_IDS_200)


def _map(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    inside = (ids >= 0) & (ids < len(table))
    return np.where(inside, table[np.clip(ids, 0, len(table) - 1)], IGNORE_LABEL).astype(np.int32)


def nyu40_to_scannet20(nyu40_ids: np.ndarray) -> np.ndarray:
    """NYU40 ids (0 = unannotated) -> ScanNet-20 class indices (int32, IGNORE_LABEL for the other 20 + 0)."""
    return _map(nyu40_ids, _NYU40_TO_20)


def raw_to_scannet200(raw_ids: np.ndarray) -> np.ndarray:
    """Raw ScanNet category ids -> ScanNet200 class indices (int32, IGNORE_LABEL outside the 200)."""
    return _map(raw_ids, _RAW_TO_200)


def read_label_tsv(path: str | Path) -> dict[int, int]:
    """``scannetv2-labels.combined.tsv`` -> {raw category id: NYU40 id} (columns ``id`` and ``nyu40id``)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "id" not in rows[0] or "nyu40id" not in rows[0]:
        raise ValueError(f"{path}: not a ScanNet label TSV (needs 'id' and 'nyu40id' columns)")
    return {int(r["id"]): int(r["nyu40id"]) for r in rows if r["id"].strip() and r["nyu40id"].strip()}


def raw_to_scannet20(raw_ids: np.ndarray, raw_to_nyu40: dict[int, int]) -> np.ndarray:
    """Raw ScanNet category ids -> ScanNet-20 indices through the TSV's NYU40 mapping (see read_label_tsv)."""
    table = np.zeros(max(raw_to_nyu40) + 1, dtype=np.int64)
    table[list(raw_to_nyu40)] = list(raw_to_nyu40.values())
    raw_ids = np.asarray(raw_ids, dtype=np.int64)
    inside = (raw_ids >= 0) & (raw_ids < len(table))
    nyu40 = np.where(inside, table[np.clip(raw_ids, 0, len(table) - 1)], 0)
    return nyu40_to_scannet20(nyu40)
