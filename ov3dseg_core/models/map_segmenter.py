"""Running a trained open-vocabulary model over a voxel map: the semantic stage of the live mapper and of the
offline evaluation (both go map -> model -> per-voxel features, so the numbers measure what the robot runs).

``MapSegmenter.update(voxel_map, center, radius)`` takes the voxels within ``radius`` of ``center`` (the local
window), builds the backbone input from their indices, mean colours and heights, optionally averages the output
features over the window's superpoints (segments of smooth normals and colour: one object part, one feature), and
fuses them into the map's float16 feature layer (weighted running average, so features settle over repeated
passes).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ov3dseg_core.config import from_dict
from ov3dseg_core.models.open_vocab3d import OpenVocab3D, OpenVocab3DConfig
from ov3dseg_core.models.pooling import scatter_mean
from ov3dseg_core.models.superpoints import SuperpointConfig, voxel_superpoints
from ov3dseg_core.models.text import TextEncoder, apply_template, build_text_encoder
from ov3dseg_core.training.checkpoint import load_checkpoint
from ov3dseg_core.models.voxel_inputs import grid_coordinates, point_features

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "ov3d_default.safetensors"
"""The embedded default model shipped with the package (see its model card beside it)."""


def resolve_checkpoint(model: str | Path) -> Path:
    """A model parameter ('default' = the embedded default, or a checkpoint path) -> an existing file path."""
    path = DEFAULT_CHECKPOINT if str(model) == "default" else Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint {path} does not exist")
    return path


@dataclass
class WindowResult:
    """One pass: the window's voxels (keys (V, 3) int32, mean positions (V, 3) metres, map frame) and the model's
    features (V, D) (None when the window was empty)."""

    num_voxels: int        # voxels the model ran on
    seconds: float         # model time
    keys: np.ndarray | None = None
    positions: np.ndarray | None = None
    features: torch.Tensor | None = None


LABELLED_MARGIN_KEY = "labelled_margin"
"""Key in a checkpoint's ``extra`` metadata of the margin (cosine) taken off the model's labelled classes."""


def label_offsets(vocabulary: Sequence[str], labelled: Sequence[str], margin: float) -> np.ndarray:
    """(L,) float32 offsets added to the cosines of ``vocabulary``: -margin for the names the model was trained on
    with labels (``labelled``, case-insensitive), 0 for the others (calibrated stacking, Chao et al. 2016: a model
    trained with labels on some classes over-scores them against names it only saw in captions)."""
    known = {name.strip().lower() for name in labelled}
    return np.array([-margin if name.strip().lower() in known else 0.0 for name in vocabulary], dtype=np.float32)


def pool_over_superpoints(features: torch.Tensor, superpoint: np.ndarray) -> torch.Tensor:
    """(V, D) unit features, each voxel's replaced by the normalised mean over its superpoint (``superpoint`` (V,)
    ids from ``voxel_superpoints``)."""
    index = torch.as_tensor(superpoint, dtype=torch.int64, device=features.device)
    mean = scatter_mean(features.float(), index, int(index.max()) + 1 if len(index) else 0)
    return torch.nn.functional.normalize(mean, dim=-1).index_select(0, index).to(features.dtype)


class MapSegmenter:
    """A trained OpenVocab3D model, its text encoder and vocabulary, applied to voxel maps.

    ``vocabulary`` are the classes the model was trained on with labels; ``labelled_margin`` (cosine, calibrated on
    validation scenes by ``ov3dseg calibrate``) is taken off their scores when voxels are labelled; ``template``
    wraps class names and queries (default: the model's training prompt); ``superpoints``: pool each window's
    features over its superpoints (None: per voxel)."""

    def __init__(self, model: OpenVocab3D, vocabulary: Sequence[str], text_encoder: TextEncoder,
                 device: str | torch.device = "cpu", max_window_voxels: int = 400_000, labelled_margin: float = 0.0,
                 template: str = "", superpoints: SuperpointConfig | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocabulary = list(vocabulary)
        self.text_encoder = text_encoder
        self.template = template or model.cfg.prompt_template
        self.superpoints = superpoints
        self.max_window_voxels = max_window_voxels
        self.labelled_margin = float(labelled_margin)

    @classmethod
    def from_checkpoint(cls, path: str | Path = "default", device: str = "cpu", **kwargs) -> "MapSegmenter":
        """Load a checkpoint written by ``ov3dseg train`` (config, vocabulary and base embeddings inside);
        ``path`` "default" is the embedded default model."""
        ckpt = load_checkpoint(resolve_checkpoint(path))
        if ckpt.config.get("method"):  # a distillation method (SAS, GeoGuide): built from its registered type
            from ov3dseg_core.models.methods import load_method

            model = load_method(ckpt.config["method"], ckpt.state_dict)
            config = model.cfg
        else:
            config = from_dict(OpenVocab3DConfig, ckpt.config["model"])
            model = OpenVocab3D(config, base_text=ckpt.state_dict["base_text"])
            model.load_state_dict({k: v.float() for k, v in ckpt.state_dict.items()})
            kwargs.setdefault("template", config.query_template)
            kwargs.setdefault("superpoints", config.superpoints if config.pool_superpoints else None)
        encoder = build_text_encoder({"type": config.text_encoder})
        if encoder.dim != config.text_dim:
            raise ValueError(f"text encoder {encoder.name} gives {encoder.dim}-d embeddings, model expects "
                             f"{config.text_dim}")
        kwargs.setdefault("labelled_margin", float(ckpt.extra.get(LABELLED_MARGIN_KEY, {}).get("margin", 0.0)))
        return cls(model, ckpt.vocabulary, encoder, device=device, **kwargs)

    @property
    def feature_dim(self) -> int:
        return self.model.cfg.text_dim

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(L, D) unit text embeddings of category names or free queries, with the model's prompt template."""
        return self.text_encoder.encode(apply_template(list(texts), self.template)).to(self.device)

    @torch.no_grad()
    def features(self, keys: np.ndarray, positions: np.ndarray, colors: np.ndarray) -> torch.Tensor:
        """Per-voxel features (V, D) for voxels given by indices (V, 3) int, mean positions (V, 3) metres (map
        frame, z up) and colours (V, 3) uint8."""
        grid = torch.from_numpy(grid_coordinates(keys))
        data = {"grid_coord": grid.to(self.device),
                "feat": torch.from_numpy(point_features(colors, positions)).to(self.device),
                "offset": torch.tensor([len(grid)], device=self.device)}
        return self.model(data)

    def update(self, voxel_map, center: np.ndarray | None = None, radius: float = 0.0) -> WindowResult:
        """Run the model on the voxels within ``radius`` metres of ``center`` (all when radius <= 0; the nearest
        ``max_window_voxels`` at most) and fuse the features into ``voxel_map``'s feature layer."""
        with voxel_map.lock:  # select on the positions, then copy only the window's keys and colours
            positions = voxel_map.positions()
            select = self._window(positions, center, radius)
            keys, colors = voxel_map.keys(select), voxel_map.colors(select)
        if len(select) == 0:
            return WindowResult(0, 0.0)
        positions = positions[select]
        t0 = time.perf_counter()
        feats = self.features(keys, positions, colors)
        if self.superpoints is not None:
            feats = pool_over_superpoints(feats, voxel_superpoints(keys, positions, colors=colors,
                                                                   **vars(self.superpoints)))
        seconds = time.perf_counter() - t0
        voxel_map.integrate_features(positions, feats.float().cpu().numpy())
        return WindowResult(len(select), seconds, keys, positions, feats)

    def _window(self, positions: np.ndarray, center: np.ndarray | None, radius: float) -> np.ndarray:
        """Indices into (M, 3) ``positions`` (metres) of the window: within ``radius`` of ``center`` (everything when
        radius <= 0), the nearest ``max_window_voxels`` at most (the first ones when there is no centre)."""
        if center is None or radius <= 0:
            return np.arange(min(len(positions), self.max_window_voxels))
        offset = positions - np.asarray(center, dtype=np.float32)
        squared = np.einsum("ij,ij->i", offset, offset)  # one pass; an axis-1 norm of (M, 3) is several times slower
        select = np.flatnonzero(squared <= np.float32(radius) ** 2)
        if len(select) > self.max_window_voxels:
            select = select[np.argsort(squared[select], kind="stable")[: self.max_window_voxels]]
        return select

    def cosines(self, features: np.ndarray | torch.Tensor, vocabulary: Sequence[str]) -> torch.Tensor:
        """(V, L) cosine similarities of per-voxel features (V, D) to the ``vocabulary`` names."""
        text = self.embed(vocabulary)
        feats = torch.as_tensor(np.asarray(features, dtype=np.float32) if not torch.is_tensor(features)
                                else features.float()).to(self.device)
        return torch.nn.functional.normalize(feats, dim=-1) @ text.t()

    def classify(self, features: np.ndarray | torch.Tensor, vocabulary: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Labels (V,) int64 (index into ``vocabulary``) and cosine scores (V,) of per-voxel features (V, D); the
        model's labelled classes compete with ``labelled_margin`` taken off their cosines."""
        cosines = self.cosines(features, vocabulary)
        offsets = torch.from_numpy(label_offsets(vocabulary, self.vocabulary, self.labelled_margin))
        labels = (cosines + offsets.to(cosines.device)).argmax(dim=-1)
        best = cosines.gather(1, labels[:, None])[:, 0]
        return labels.cpu().numpy(), best.cpu().numpy()
