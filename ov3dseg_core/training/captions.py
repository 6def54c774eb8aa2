"""A simulated 2D captioner: region and view captions for training scenes.

Open-vocabulary 3D methods (PLA, RegionPLC, Mosaic3D, XMask3D's L_view) learn categories that have no labels from
captions that a 2D vision-language model (ViT-GPT2, Osprey) writes for images and image regions. No such model
runs here, so for synthetic scenes this module plays the captioner: it describes an object region or a view in
free words (synonyms, colours, omissions and mistakes included). Its input is what the captioner would see,
the identity of the objects in the image; the closed-set label channel of the training loss stays restricted
to base classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYNONYMS: dict[str, list[str]] = {
    "wall": ["wall"], "floor": ["floor", "ground"], "cabinet": ["cabinet", "cupboard"],
    "bed": ["bed"], "chair": ["chair", "seat"], "sofa": ["sofa", "couch"], "table": ["table"],
    "door": ["door"], "window": ["window"], "bookshelf": ["bookshelf", "bookcase", "shelf with books"],
    "picture": ["picture", "painting", "framed picture"], "counter": ["counter", "countertop"],
    "desk": ["desk", "writing desk"], "curtain": ["curtain", "drapes"], "refrigerator": ["refrigerator", "fridge"],
    "shower curtain": ["shower curtain"], "toilet": ["toilet"], "sink": ["sink", "washbasin"],
    "bathtub": ["bathtub", "bath tub"], "other furniture": ["piece of furniture", "side table"],
}


@dataclass
class CaptionerConfig:
    drop_prob: float = 0.15      # region left without a caption (captioner said nothing useful)
    confuse_prob: float = 0.05   # caption names another category (captioner mistake)
    synonym_prob: float = 0.5    # caption uses a synonym rather than the category name


def describe(name: str, rng: np.random.Generator, cfg: CaptionerConfig) -> str:
    """A free-text name for category ``name`` (a synonym with probability ``synonym_prob``)."""
    words = SYNONYMS.get(name, [name])
    if len(words) > 1 and rng.random() < cfg.synonym_prob:
        return words[int(rng.integers(1, len(words)))]
    return words[0]


def region_captions(names: list[str], vocabulary: list[str], rng: np.random.Generator,
                    cfg: CaptionerConfig) -> list[str | None]:
    """One caption per region (None = dropped), e.g. "a couch in a scene" for a sofa region."""
    out: list[str | None] = []
    for name in names:
        r = rng.random()
        if r < cfg.drop_prob:
            out.append(None)
            continue
        if r < cfg.drop_prob + cfg.confuse_prob:
            name = vocabulary[int(rng.integers(len(vocabulary)))]
        out.append(f"a {describe(name, rng, cfg)} in a scene")
    return out


def view_caption(names: list[str], rng: np.random.Generator, cfg: CaptionerConfig) -> str:
    """A sentence listing (most of) the distinct objects seen, e.g. "a room with a bed, a desk and a chair"."""
    distinct = [n for n in dict.fromkeys(names) if n not in ("wall", "floor")]
    kept = [describe(n, rng, cfg) for n in distinct if rng.random() >= cfg.drop_prob]
    if not kept:
        return "an empty room"
    if len(kept) == 1:
        return f"a room with a {kept[0]}"
    return "a room with " + ", ".join(f"a {k}" for k in kept[:-1]) + f" and a {kept[-1]}"
