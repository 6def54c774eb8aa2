"""ov3dseg_core.compat: torchvision import + NMS on CPU torch, spconv backward and thread-safe scatter on CPU."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ov3dseg_core import compat

compat.apply()
import spconv.pytorch as spconv  # noqa: E402
import torchvision  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CPU_ONLY = not torch.cuda.is_available()


def run_python(code: str, threads: int = 1) -> str:
    """Run ``code`` in a fresh interpreter (imports happen in the order the code gives); return stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Textbook sequential NMS, for cross-checking."""
    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda j: -float(scores[j])):
        if all(float(torchvision.ops.box_iou(boxes[i : i + 1], boxes[k : k + 1])) <= threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.skipif(not CPU_ONLY, reason="the fixes only apply without CUDA")
def test_apply_before_imports_makes_the_model_libraries_importable():
    out = run_python(
        """
        import torch
        from ov3dseg_core import compat
        compat.apply(); compat.apply()
        import open_clip, diffusers, sentence_transformers, transformers, torchvision
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.9]])
        print(torchvision.ops.nms(boxes, torch.tensor([0.5, 0.6]), 0.5).tolist())
        """
    )
    assert out.strip() == "[1]"


@pytest.mark.skipif(not CPU_ONLY, reason="the fixes only apply without CUDA")
def test_without_the_fix_torchvision_does_not_import():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True, env=env)
    if result.returncode == 0:
        pytest.skip("this torchvision's compiled ops load on this torch: nothing to fix")
    assert "torchvision::nms does not exist" in result.stderr


def test_apply_does_nothing_where_cuda_is_available():
    out = run_python(
        """
        import sys, torch
        torch.cuda.is_available = lambda: True
        from ov3dseg_core import compat
        compat.apply()
        import spconv.pytorch
        from spconv.pytorch import cppcore, ops
        hooks = sum(isinstance(f, compat._PatchAfterImport) for f in sys.meta_path)
        print(hooks, hasattr(torch.ops.torchvision, "nms"), ops.get_current_stream is cppcore.get_current_stream,
              ops.SPCONV_CPP_GEMM)
        """
    )
    assert out.split() == ["0", "False", "True", "True"]


def test_nms_hand_computed():
    # D duplicates A; B overlaps A/D with IoU 81/119 = 0.68; C is disjoint.
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert torchvision.ops.nms(boxes, scores, 0.7).tolist() == [3, 1, 2]
    # Greedy, not "fast" NMS: B is suppressed by A, so C (which only overlaps B, IoU 1/3) survives.
    chain = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], dtype=torch.float32)
    assert torchvision.ops.nms(chain, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]
    assert torchvision.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


def test_nms_matches_sequential_reference_on_random_boxes():
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(60, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=gen) * 15], dim=1)
    scores = torch.rand(60, generator=gen)
    for threshold in (0.1, 0.3, 0.6):
        assert compat.nms_reference(boxes, scores, threshold).tolist() == greedy_nms(boxes, scores, threshold)
    assert torchvision.ops.batched_nms(boxes, scores, torch.zeros(60, dtype=torch.long), 0.3).tolist() == greedy_nms(
        boxes, scores, 0.3
    )


def _sparse_case(seed: int, size: int = 8, count: int = 200, channels: int = 4):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.unique(torch.randint(0, size, (count, 3), generator=gen), dim=0)
    indices = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], dim=1).int()
    feats = torch.randn(len(coords), channels, generator=gen)
    return coords, indices, feats


def test_submconv_forward_and_backward_match_dense_conv3d():
    coords, indices, feats = _sparse_case(0)
    size = 8
    conv = spconv.SubMConv3d(4, 5, kernel_size=3, padding=1, bias=False)
    target = torch.randn(len(coords), 5, generator=torch.Generator().manual_seed(1))

    sparse_in = feats.clone().requires_grad_(True)
    out = conv(spconv.SparseConvTensor(sparse_in, indices, [size] * 3, 1)).features
    (out * target).sum().backward()

    dense_in = feats.clone().requires_grad_(True)
    weight = conv.weight.detach().clone().requires_grad_(True)  # (out, kz, ky, kx, in)
    grid = torch.zeros(size, size, size, 4).index_put((coords[:, 0], coords[:, 1], coords[:, 2]), dense_in)
    grid = grid.permute(3, 0, 1, 2)[None]
    dense_out = torch.nn.functional.conv3d(grid, weight.permute(0, 4, 1, 2, 3), padding=1)
    ref = dense_out[0, :, coords[:, 0], coords[:, 1], coords[:, 2]].T
    (ref * target).sum().backward()

    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse_in.grad, dense_in.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv.weight.grad, weight.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not CPU_ONLY, reason="the fixes only apply without CUDA")
def test_submconv_is_exact_with_several_threads():
    # spconv's own CPU scatter-add races between threads on dense-ish inputs; the fixed path must stay exact.
    out = run_python(
        """
        import torch
        from ov3dseg_core import compat
        compat.apply()
        import spconv.pytorch as spconv
        torch.manual_seed(0)
        coords = torch.unique(torch.randint(0, 12, (1500, 3)), dim=0)
        indices = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1).int()
        feats = torch.randn(len(coords), 8)
        conv = spconv.SubMConv3d(8, 8, 3, bias=False)
        dense = spconv.SparseConvTensor(feats, indices, [16] * 3, 1).dense()
        ref = torch.nn.functional.conv3d(dense, conv.weight.permute(0, 4, 1, 2, 3), padding=1)
        ref = ref * (dense.abs().sum(1, keepdim=True) > 0)
        with torch.no_grad():
            errors = [(conv(spconv.SparseConvTensor(feats, indices, [16] * 3, 1)).dense() - ref).abs().max().item()
                      for _ in range(30)]
        print(max(errors))
        """,
        threads=2,
    )
    assert float(out) < 1e-5
