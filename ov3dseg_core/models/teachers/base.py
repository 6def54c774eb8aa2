"""2D teacher plug-ins (REGISTRY group "teacher"): what SAS and GeoGuide distil from.

- ``DenseTeacher`` (LSeg, OpenSeg): an image -> per-pixel features in the text space (``PixelFeatures``).
- ``MaskTeacher`` (SEEM): an image -> masks with a label each (``MaskSet``).
- ``Captioner`` (TAP): an image and its masks -> one free-form caption per mask.

Real models plug in by registering a subclass that loads its weights from a local path (no weights ship with this
package); ``simulated.py`` holds the offline stand-ins used on simulated scenes. Teachers are given the frame
index with the frame so that stand-ins can draw reproducible noise.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ov3dseg_core.data.frames import RGBDFrame
from ov3dseg_core.models.multiview import PixelFeatures


@dataclass
class MaskSet:
    """masks: (M, H, W) bool at the image size; labels: M label words (the teacher's own vocabulary)."""

    masks: np.ndarray
    labels: list[str]


class DenseTeacher(ABC):
    """Per-pixel open-vocabulary features, already in the shared text space (LSeg and OpenSeg are CLIP-aligned)."""

    @abstractmethod
    def __call__(self, index: int, frame: RGBDFrame) -> PixelFeatures:
        ...


class MaskTeacher(ABC):
    @abstractmethod
    def __call__(self, index: int, frame: RGBDFrame) -> MaskSet:
        ...


class Captioner(ABC):
    @abstractmethod
    def __call__(self, index: int, frame: RGBDFrame, masks: np.ndarray) -> list[str]:
        """One caption per mask of masks (M, H, W) bool."""
