"""SAS's Model Alignment via Text (Sec. 3.1): a mask teacher's masks become per-pixel text-space features.

For each mask m_j with label l_j, the captioner's caption c_j has its noun replaced by l_j ("a wooden bench",
"table" -> "a wooden table"), the new caption is encoded by the shared text encoder and painted onto the mask's
pixels (later, smaller masks on top). Pixels outside every mask get no feature.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
import torch

from ov3dseg_core.data.frames import RGBDFrame
from ov3dseg_core.models.multiview import PixelFeatures
from ov3dseg_core.models.teachers.base import Captioner, MaskTeacher
from ov3dseg_core.training.captions import _COLOURS

MODIFIERS = frozenset({"small", "large", "big", "tiny", *_COLOURS})
"""Words kept in front of the replaced noun (size and colour adjectives)."""

_TAIL = re.compile(r"\s+(next to|near|beside|in front of|against|on the|under|with)\s+.*$")
_ARTICLE = re.compile(r"^(a|an|the|some)\s+")


def replace_noun(caption: str, label: str) -> str:
    """The caption with the noun of its head phrase replaced by ``label``; adjectives, article and a trailing
    relation ("... next to a table") kept. "a small grey couch near a window", "sofa" -> "a small grey sofa near a
    window"."""
    caption = caption.strip()
    tail = _TAIL.search(caption)
    head, rest = (caption[: tail.start()], caption[tail.start():]) if tail else (caption, "")
    words = _ARTICLE.sub("", head).split()
    kept = []
    for word in words:
        if word not in MODIFIERS:
            break
        kept.append(word)
    phrase = " ".join(kept + [label.strip()])
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase + rest


def paint_masks(masks: np.ndarray, embeddings: torch.Tensor, stride: int = 1) -> PixelFeatures:
    """PixelFeatures of masks (M, H, W) bool painted with embeddings (M, C), on the image grid subsampled by
    ``stride``; larger masks first, so a small mask on top of a large one keeps its pixels."""
    m, h, w = masks.shape
    index = np.full((h, w), -1, dtype=np.int64)[::stride, ::stride].copy()
    for j in np.argsort(-masks.reshape(m, -1).sum(axis=1), kind="stable"):
        index[masks[j, ::stride, ::stride]] = j
    return PixelFeatures(embeddings, torch.from_numpy(index))


class AlignedMaskTeacher:
    """A mask teacher + captioner + text encoder as a dense text-space teacher: ``(index, frame) ->
    PixelFeatures`` (the SEEM branch F_S^2D of SAS)."""

    def __init__(self, teacher: MaskTeacher, captioner: Captioner, embed: Callable[[list[str]], torch.Tensor],
                 stride: int = 4):
        self.teacher, self.captioner, self.embed, self.stride = teacher, captioner, embed, stride

    def __call__(self, index: int, frame: RGBDFrame) -> PixelFeatures:
        masks = self.teacher(index, frame)
        if len(masks.labels) == 0:
            h, w = frame.depth[:: self.stride, :: self.stride].shape
            return PixelFeatures(torch.zeros(1, 1), torch.full((h, w), -1, dtype=torch.int64))
        captions = self.captioner(index, frame, masks.masks)
        texts = [replace_noun(c, l) for c, l in zip(captions, masks.labels)]
        return paint_masks(masks.masks, self.embed(texts).float(), self.stride)
