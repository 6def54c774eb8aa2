"""A simulated 2D captioner: free-form region and view captions for training scenes.

Open-vocabulary 3D methods (PLA, RegionPLC, Mosaic3D, XMask3D's L_view) learn categories that have no labels from
captions that a 2D vision-language model (ViT-GPT2, Osprey, BLIP) writes for images and image regions. No such
model runs here, so for simulated scenes this module plays one, with the habits of the real ones:

- phrases, not labels: a colour and a size word, sometimes a relation to a neighbouring object ("a grey couch
  next to a wooden table", "a small white sink against the wall"); never the evaluation's prompt template;
- the words a captioner uses: synonyms ("couch", "fridge", "bookcase") and vague names ("some furniture");
- mistakes at fixed rates: regions left without a caption (``drop_prob``), a look-alike category named instead
  (``confuse_prob``: desk <-> table, sofa -> armchair / bed, bookshelf -> cabinet, ...), a vague name
  (``vague_prob``);
- view captions name several objects with counts ("a room with two chairs, a wooden table and a window").

Its input is what a captioner would see: the identity, colour, size and neighbours of the objects in view.
The regions these captions are attached to are made imperfect elsewhere (``map_windows.caption_regions``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SYNONYMS: dict[str, list[str]] = {
    "wall": ["wall"], "floor": ["floor", "ground", "wooden floor"], "cabinet": ["cabinet", "cupboard"],
    "bed": ["bed", "double bed"], "chair": ["chair", "seat", "dining chair"], "sofa": ["sofa", "couch"],
    "table": ["table", "coffee table"], "door": ["door", "doorway"], "window": ["window", "glass window"],
    "bookshelf": ["bookshelf", "bookcase", "shelf full of books"], "picture": ["picture", "painting", "poster"],
    "counter": ["counter", "countertop", "kitchen counter"], "desk": ["desk", "writing desk", "work desk"],
    "curtain": ["curtain", "drapes"], "refrigerator": ["refrigerator", "fridge"],
    "shower curtain": ["shower curtain", "bath curtain"], "toilet": ["toilet", "toilet bowl"],
    "sink": ["sink", "washbasin"], "bathtub": ["bathtub", "tub"],
    "other furniture": ["piece of furniture", "side table", "stool"],
}
"""What a captioner calls each category: the first entry is the plain name."""

LOOK_ALIKES: dict[str, list[str]] = {
    "desk": ["table"], "table": ["desk"], "sofa": ["armchair", "bed"], "chair": ["stool", "armchair"],
    "bookshelf": ["cabinet", "shelf"], "cabinet": ["dresser", "bookshelf"], "counter": ["cabinet", "table"],
    "refrigerator": ["cabinet", "closet"], "curtain": ["window", "blinds"], "window": ["mirror", "picture"],
    "picture": ["window", "mirror"], "bed": ["sofa"], "bathtub": ["sink"], "sink": ["bathtub"],
    "toilet": ["sink", "chair"], "door": ["wall", "cabinet"], "shower curtain": ["curtain"],
}
"""The mistakes captioners make: a category named as something that looks like it."""

VAGUE = ["some furniture", "an object", "a thing", "furniture"]

_COLOURS = {"white": (235, 235, 230), "black": (30, 30, 30), "grey": (128, 128, 128), "brown": (110, 75, 45),
            "beige": (210, 190, 150), "red": (180, 40, 40), "green": (60, 140, 60), "blue": (50, 80, 170),
            "yellow": (220, 200, 60), "orange": (220, 130, 40), "wooden": (160, 110, 60)}
_COLOUR_NAMES = list(_COLOURS)
_COLOUR_TABLE = np.array(list(_COLOURS.values()), dtype=np.float32)
_NUMBERS = ["", "one", "two", "three", "four", "five"]
_RELATIONS = ["next to", "near", "beside", "in front of"]
_SCENES = ["a room", "an indoor scene", "a view of a room", "a photo of a room"]


@dataclass
class CaptionerConfig:
    drop_prob: float = 0.2       # region without a caption (the captioner said nothing useful)
    confuse_prob: float = 0.1    # a look-alike category named instead
    vague_prob: float = 0.05     # "some furniture" instead of a name
    synonym_prob: float = 0.5    # a synonym instead of the plain name
    colour_prob: float = 0.6     # a colour word
    size_prob: float = 0.2       # "small" / "large"
    relation_prob: float = 0.4   # "... next to a wooden table" (when there is a neighbour)
    view_drop_prob: float = 0.25  # an object in view left out of the view caption


@dataclass
class SeenObject:
    """An object as a captioner sees it: its true category, mean colour (3,) uint8 RGB and extent (3,) metres."""

    name: str
    color: np.ndarray
    extent: np.ndarray


def colour_word(color: np.ndarray) -> str:
    """The nearest named colour of an RGB triple (0-255)."""
    d = np.square(_COLOUR_TABLE - np.asarray(color, dtype=np.float32)[None]).sum(axis=1)
    return _COLOUR_NAMES[int(np.argmin(d))]


def noun(name: str, rng: np.random.Generator, cfg: CaptionerConfig) -> str:
    """The word a captioner uses for category ``name`` (a synonym with probability ``synonym_prob``)."""
    words = SYNONYMS.get(name, [name])
    if len(words) > 1 and rng.random() < cfg.synonym_prob:
        return words[int(rng.integers(1, len(words)))]
    return words[0]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def noun_phrase(obj: SeenObject, rng: np.random.Generator, cfg: CaptionerConfig, mistakes: bool = True) -> str:
    """"a small grey couch": article, optional size and colour words, the (possibly mistaken) noun."""
    r = rng.random() if mistakes else 1.0
    if r < cfg.vague_prob:
        return VAGUE[int(rng.integers(len(VAGUE)))]
    if r < cfg.vague_prob + cfg.confuse_prob and obj.name in LOOK_ALIKES:
        options = LOOK_ALIKES[obj.name]
        word = options[int(rng.integers(len(options)))]
    else:
        word = noun(obj.name, rng, cfg)
    words = []
    if rng.random() < cfg.size_prob:
        words.append("large" if float(np.max(obj.extent)) > 1.2 else "small")
    if rng.random() < cfg.colour_prob:
        words.append(colour_word(obj.color))
    return _article(" ".join(words + [word]))


def region_caption(obj: SeenObject, neighbours: Sequence[SeenObject], rng: np.random.Generator,
                   cfg: CaptionerConfig) -> str | None:
    """A free-form caption of one object region, or None when the captioner gives nothing useful."""
    if rng.random() < cfg.drop_prob:
        return None
    phrase = noun_phrase(obj, rng, cfg)
    if neighbours and rng.random() < cfg.relation_prob:
        other = neighbours[int(rng.integers(len(neighbours)))]
        relation = _RELATIONS[int(rng.integers(len(_RELATIONS)))]
        phrase += f" {relation} {noun_phrase(other, rng, cfg, mistakes=False)}"
    elif obj.name not in ("wall", "floor") and rng.random() < 0.2:
        phrase += " against the wall" if rng.random() < 0.5 else " on the floor"
    return phrase


def view_caption(objects: Sequence[SeenObject], rng: np.random.Generator, cfg: CaptionerConfig) -> str:
    """One sentence naming most objects in view with counts, e.g. "a room with two chairs and a wooden table"."""
    counts: dict[str, int] = {}
    colours: dict[str, np.ndarray] = {}
    for obj in objects:
        if obj.name in ("wall", "floor") or rng.random() < cfg.view_drop_prob:
            continue
        counts[obj.name] = counts.get(obj.name, 0) + 1
        colours.setdefault(obj.name, obj.color)
    scene = _SCENES[int(rng.integers(len(_SCENES)))]
    if not counts:
        return f"{scene} with bare walls"
    parts = []
    for name, count in counts.items():
        if count > 1:
            parts.append(f"{_NUMBERS[min(count, 5)]} {noun(name, rng, cfg)}s")
        else:
            parts.append(noun_phrase(SeenObject(name, colours[name], np.zeros(3)), rng, cfg))
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"
    return f"{scene} with {listed}"
