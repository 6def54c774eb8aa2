"""Offline stand-ins for the 2D teachers on simulated scenes (no LSeg/SEEM/TAP weights exist on these machines).

They read what a real model would look at, the rendered objects of a frame (its instance and class images), and
answer with a real model's habits, never with the evaluation's labels in its wording:

- ``SimDenseTeacher`` (LSeg-like): per-pixel text embeddings of "a photo of a <word>", <word> a synonym of the
  object's class or, at a per-class rate, a look-alike's name (one decision per object and frame, like a real
  misidentification), plus per-pixel noise, on a grid 1/stride of the image (blurred object boundaries). Good on
  large surfaces and furniture, weak on small objects and on some classes (``LSEG_LIKE``).
- ``SimMaskTeacher`` (SEEM-like): one mask per object, eroded or dilated by a few pixels, some objects missed,
  labelled with a synonym or a look-alike; crisp on objects, weak on walls, floors and other stuff (``SEEM_LIKE``).
- ``SimCaptioner`` (TAP-like): a free-form phrase per mask ("a small grey couch") from the simulated captioner.

The two profiles give the teachers different, measurable per-class strengths, which is what SAS's capability
weighting exploits. Novel classes are treated exactly like the others: they reach a 3D model only through these
outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from ov3dseg_core.data.frames import RGBDFrame
from ov3dseg_core.models.multiview import PixelFeatures
from ov3dseg_core.models.teachers.base import Captioner, DenseTeacher, MaskSet, MaskTeacher
from ov3dseg_core.registry import REGISTRY
from ov3dseg_core.training.captions import LOOK_ALIKES, SYNONYMS, CaptionerConfig, SeenObject, noun_phrase


@dataclass
class TeacherProfile:
    """A simulated teacher's habits.

    confusion: per class name, probability that an object is named as a look-alike in a frame (default_confusion
    otherwise); small_area / small_confusion: objects covering less than this fraction of the image get this much
    extra confusion; look_alikes: teacher-specific mistakes added to the captioner's LOOK_ALIKES; noise: per-pixel
    Gaussian noise std per feature dimension (dense); stride: output grid = image / stride; miss: probability that
    an object gets no mask (masks); boundary_px: masks eroded or dilated by up to this many pixels.
    """

    confusion: dict[str, float] = field(default_factory=dict)
    default_confusion: float = 0.05
    small_area: float = 0.0
    small_confusion: float = 0.0
    look_alikes: dict[str, list[str]] = field(default_factory=dict)
    noise: float = 0.0
    stride: int = 4
    miss: float = 0.0
    boundary_px: int = 0
    min_area_px: int = 30


LSEG_LIKE = TeacherProfile(
    confusion={"picture": 0.5, "sink": 0.45, "toilet": 0.45, "bookshelf": 0.4, "desk": 0.45, "counter": 0.4,
               "shower curtain": 0.5, "cabinet": 0.3, "refrigerator": 0.3},
    default_confusion=0.05, small_area=0.02, small_confusion=0.25, noise=0.03, stride=8)
SEEM_LIKE = TeacherProfile(
    confusion={"wall": 0.4, "floor": 0.3, "curtain": 0.45, "window": 0.35, "door": 0.35, "bed": 0.3,
               "table": 0.4, "sofa": 0.35, "bathtub": 0.3},
    default_confusion=0.05, look_alikes={"wall": ["door", "window", "cabinet"], "floor": ["rug", "table"]},
    stride=4, miss=0.1, boundary_px=3)


def frame_objects(frame: RGBDFrame, label_names: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The objects rendered in a frame: instance ids (O,), their majority class names, pixel areas (O,)."""
    inst, lab = frame.instances.reshape(-1).astype(np.int64), frame.labels.reshape(-1).astype(np.int64)
    keep = (inst >= 0) & (lab >= 0) & (lab < len(label_names))
    inst, lab = inst[keep], lab[keep]
    pairs, counts = np.unique(inst * len(label_names) + lab, return_counts=True)
    order = np.lexsort((counts, pairs // len(label_names)))
    pairs = pairs[order]
    last = np.r_[pairs[1:] // len(label_names) != pairs[:-1] // len(label_names), True]
    ids = pairs[last] // len(label_names)
    areas = np.bincount(np.searchsorted(ids, inst), minlength=len(ids))
    return ids, [label_names[c] for c in pairs[last] % len(label_names)], areas


class _SimTeacher:
    def __init__(self, label_names: Sequence[str], profile: TeacherProfile, seed: int):
        self.label_names, self.profile, self.seed = list(label_names), profile, seed

    def _rng(self, index: int, salt: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, salt, index))

    def _word(self, name: str, area_fraction: float, rng: np.random.Generator) -> str:
        """What the teacher calls an object of class ``name``: a look-alike at the class's confusion rate."""
        p = self.profile
        confusion = p.confusion.get(name, p.default_confusion)
        if area_fraction < p.small_area:
            confusion += p.small_confusion
        options = p.look_alikes.get(name, []) + LOOK_ALIKES.get(name, [])
        if options and rng.random() < confusion:
            return options[int(rng.integers(len(options)))]
        words = SYNONYMS.get(name, [name])
        return words[int(rng.integers(len(words)))]


@REGISTRY.register("teacher", "SimDenseTeacher")
class SimDenseTeacher(_SimTeacher, DenseTeacher):
    """LSeg-like dense teacher; ``embed(texts) -> (n, C)`` is the shared text encoder."""

    def __init__(self, label_names: Sequence[str], embed: Callable[[list[str]], torch.Tensor],
                 profile: TeacherProfile = LSEG_LIKE, seed: int = 0):
        super().__init__(label_names, profile, seed)
        self.embed = embed

    def __call__(self, index: int, frame: RGBDFrame) -> PixelFeatures:
        rng = self._rng(index, 1)
        s = self.profile.stride
        ids, names, areas = frame_objects(frame, self.label_names)
        words = [f"a photo of a {self._word(n, a / frame.depth.size, rng)}" for n, a in zip(names, areas)]
        grid = frame.instances[s // 2:: s, s // 2:: s].astype(np.int64)  # nearest sample: coarse boundaries
        if len(ids) == 0:
            return PixelFeatures(torch.zeros(1, 1), torch.full(grid.shape, -1, dtype=torch.int64))
        row = np.searchsorted(ids, grid).clip(0, len(ids) - 1)
        valid = (grid >= 0) & (ids[row] == grid)
        table = self.embed(words).float()[torch.from_numpy(row.reshape(-1))]
        table = table + self.profile.noise * torch.from_numpy(rng.standard_normal(table.shape, dtype=np.float32))
        index_map = np.where(valid, np.arange(grid.size).reshape(grid.shape), -1)
        return PixelFeatures(torch.nn.functional.normalize(table, dim=-1), torch.from_numpy(index_map))


@REGISTRY.register("teacher", "SimMaskTeacher")
class SimMaskTeacher(_SimTeacher, MaskTeacher):
    """SEEM-like mask teacher: imperfect per-object masks with label words."""

    def __init__(self, label_names: Sequence[str], profile: TeacherProfile = SEEM_LIKE, seed: int = 0):
        super().__init__(label_names, profile, seed)

    def __call__(self, index: int, frame: RGBDFrame) -> MaskSet:
        rng = self._rng(index, 2)
        p = self.profile
        ids, names, areas = frame_objects(frame, self.label_names)
        masks, labels = [], []
        for obj, name, area in zip(ids, names, areas):  # one step per object in view
            if area < p.min_area_px or rng.random() < p.miss:
                continue
            mask = frame.instances == obj
            r = int(rng.integers(-p.boundary_px, p.boundary_px + 1)) if p.boundary_px else 0
            if r > 0:
                mask = ndimage.binary_dilation(mask, iterations=r)
            elif r < 0:
                mask = ndimage.binary_erosion(mask, iterations=-r)
            if mask.sum() >= p.min_area_px:
                masks.append(mask)
                labels.append(self._word(name, area / frame.depth.size, rng))
        shape = frame.depth.shape
        return MaskSet(np.stack(masks) if masks else np.zeros((0, *shape), bool), labels)


@REGISTRY.register("teacher", "SimCaptioner")
class SimCaptioner(Captioner):
    """TAP-like captioner: a phrase for the object that covers most of each mask, with colour and size words and
    the simulated captioner's mistakes."""

    def __init__(self, label_names: Sequence[str], config: CaptionerConfig | None = None, seed: int = 0):
        self.label_names, self.cfg, self.seed = list(label_names), config or CaptionerConfig(), seed

    def __call__(self, index: int, frame: RGBDFrame, masks: np.ndarray) -> list[str]:
        rng = np.random.default_rng((self.seed, 3, index))
        labels = frame.labels.astype(np.int64)
        captions = []
        for mask in masks:
            under = labels[mask]
            under = under[(under >= 0) & (under < len(self.label_names))]
            name = self.label_names[np.bincount(under).argmax()] if len(under) else "object"
            colour = frame.color[mask].mean(axis=0) if frame.color is not None else np.full(3, 128.0)
            extent = np.full(3, 2.0 if mask.mean() > 0.2 else 0.5)
            captions.append(noun_phrase(SeenObject(name, colour, extent), rng, self.cfg))
        return captions
