"""CPU-only compatibility fixes for third-party packages; does nothing where CUDA works.

Call ``apply()`` before importing open_clip, diffusers, transformers, sentence_transformers or spconv
(``ov3dseg_core.models`` does it on import). It is idempotent and edits no installed file. Three problems:

1. torchvision 0.28.0 exists on PyPI only as a CUDA build. On CPU torch its compiled extension (``_C``) fails to
   load, and ``import torchvision`` then raises ``RuntimeError: operator torchvision::nms does not exist``
   because ``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
   ``torchvision::qnms`` at import time (the other ops' registrations are skipped when the extension is missing).
   Fix, only when torchvision is not imported yet and its extension really fails to load: define those two op
   schemas with ``torch.library`` and give them a pure-PyTorch CPU NMS kernel, and let
   ``torchvision.ops.boxes`` skip its "extension loaded" assertion (patched right after that module executes, by
   a one-shot import hook) so that ``torchvision.ops.nms`` runs on the kernel. roi_align/box_iou fall back to
   torchvision's own Python code; deform_conv2d, roi_pool, ps_roi_* and ``torchvision.io`` decoding stay
   unavailable.
2. spconv 2.3.8 asks ``torch.cuda.current_stream()`` for a stream handle in every op, including on CPU tensors,
   so backward on CPU raises ``Torch not compiled with CUDA enabled``. Fix: ``get_current_stream`` in
   ``spconv.pytorch.cppcore`` (and in every ``spconv.pytorch`` module that imported it by name: ``ops``,
   ``hash``, ``utils``, the quantization modules) returns 0, the "default stream" handle the CPU kernels ignore.
3. spconv's CPU scatter-add (``GatherCPU::scatter_add``, used by every sparse conv forward and backward) shares
   its row pointers between OpenMP threads, so with more than one thread SubMConv3d results are randomly wrong
   (errors of the order of the outputs themselves on dense-ish inputs). Fix: ``SpconvOps.scatter_add_cpu`` becomes
   a ``torch.index_add_``, and ``spconv.pytorch.ops.SPCONV_CPP_GEMM`` is switched off so that CPU convolutions
   take spconv's Python gather-matmul-scatter loop, which calls that function (the C++ loop calls the racy one).
   Fixes 2 and 3 are applied at once if ``spconv.pytorch`` is already imported, otherwise right after
   ``spconv.pytorch.ops`` executes.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch

_lock = threading.Lock()
_applied = False
_torchvision_lib: torch.library.Library | None = None  # keeps the op registrations alive


def apply() -> None:
    """Install the CPU fixes above once per process; a no-op when ``torch.cuda.is_available()``."""
    global _applied
    with _lock:
        if _applied:
            return
        _applied = True
        if torch.cuda.is_available():
            return
        _fix_torchvision()
        _fix_spconv()


# --------------------------------------------------------------------------------------------- torchvision
def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision's semantics, in plain PyTorch.

    boxes (N, 4) (x1, y1, x2, y2); scores (N,). Returns the kept indices (K,) int64 by decreasing score; a box is
    dropped when its IoU with a kept, higher-scoring box is > ``iou_threshold``. The greedy decision is taken
    as a fixed point on the (N, N) overlap matrix (O(N^2) memory): each round keeps every undecided box that no
    kept or undecided higher-ranked box overlaps, then drops the boxes a kept box overlaps; every round decides
    at least the highest-ranked undecided box.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"nms expects boxes (N, 4) and scores (N,), got {tuple(boxes.shape)}, {tuple(scores.shape)}")
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order].to(torch.float32 if not boxes.is_floating_point() else boxes.dtype)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.minimum(b[:, None, 2:], b[None, :, 2:]) - torch.maximum(b[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area[:, None] + area[None, :] - inter)
    overlaps = (iou > iou_threshold).triu(diagonal=1)  # [i, j]: higher-ranked i would suppress j
    kept = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    undecided = torch.ones_like(kept)
    while bool(undecided.any()):
        blocked = (overlaps & (kept | undecided)[:, None]).any(dim=0)
        newly_kept = undecided & ~blocked
        kept |= newly_kept
        suppressed = (overlaps & kept[:, None]).any(dim=0)
        undecided &= ~(newly_kept | suppressed)
    return order[kept]


def _quantized_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision::qnms`` on the integer representations of quantized boxes and scores."""
    return nms_reference(boxes.to(torch.float32), scores.to(torch.float32), iou_threshold)


def _torchvision_extension_loads(package_dir: Path) -> bool:
    """Whether torchvision's compiled ``_C`` library loads into this torch (without importing torchvision)."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = package_dir / f"_C{suffix}"
        if path.exists():
            try:
                torch.ops.load_library(str(path))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def _fix_torchvision() -> None:
    global _torchvision_lib
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    if _torchvision_extension_loads(Path(next(iter(spec.submodule_search_locations)))):
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms_reference, "CPU")
    lib.impl("qnms", _quantized_nms, "CPU")
    _torchvision_lib = lib
    _patch_after_import("torchvision.ops.boxes", _allow_registered_nms)


def _allow_registered_nms(boxes_module: ModuleType) -> None:
    """``torchvision.ops.nms`` asserts the extension loaded; the ops it calls are the ones registered above."""
    boxes_module._assert_has_ops = lambda: None


# ------------------------------------------------------------------------------------------------- spconv
def _no_cuda_stream() -> int:
    """Stream handle 0 for spconv ops on CPU tensors (spconv ignores it there)."""
    return 0


def _scatter_add_rows(out: Any, rows: Any, indices: Any) -> None:
    """out[indices[i]] += rows[i] for i < len(indices), on cumm tensor views of CPU torch tensors."""
    index = torch.from_numpy(indices.numpy_view()).long()
    target = torch.from_numpy(out.numpy_view())
    target.index_add_(0, index, torch.from_numpy(rows.numpy_view())[: len(index)])


def _fix_spconv() -> None:
    if importlib.util.find_spec("spconv") is None:
        return
    if "spconv.pytorch.ops" in sys.modules:
        _patch_spconv(sys.modules["spconv.pytorch.ops"])
    else:
        _patch_after_import("spconv.pytorch.ops", _patch_spconv)


def _patch_spconv(ops: ModuleType) -> None:
    cppcore = sys.modules["spconv.pytorch.cppcore"]
    original = cppcore.get_current_stream
    for name, module in list(sys.modules.items()):
        if name.startswith("spconv.pytorch") and getattr(module, "get_current_stream", None) is original:
            module.get_current_stream = _no_cuda_stream
    ops.SPCONV_CPP_GEMM = False
    ops.SpconvOps.scatter_add_cpu = staticmethod(_scatter_add_rows)


# ------------------------------------------------------------------------------------------ import hook
class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """One-shot ``sys.meta_path`` finder: runs ``patch(module)`` right after module ``name`` first executes."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.patch = patch

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 (importlib protocol)
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_then_patch(module: ModuleType) -> None:
            execute(module)
            self.patch(module)

        spec.loader.exec_module = exec_then_patch
        return spec


def _patch_after_import(name: str, patch: Callable[[ModuleType], None]) -> None:
    sys.meta_path.insert(0, _PatchAfterImport(name, patch))


__all__ = ["apply", "nms_reference"]
