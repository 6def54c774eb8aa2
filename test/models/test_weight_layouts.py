"""Kernel-level equivalence of the weight conversions: spconv layers holding converted weights against brute-force
NumPy references of the source library's convolution (MinkowskiEngine kernel offsets, Mosaic3D's 1x1 matmul), on a
few dozen random voxels. Each test also shows that the wrong reading (offset order, 1x1 orientation) is caught."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ov3dseg_core.models.backbones.layouts import (minkowski_to_spconv, out_in_pointwise_to_spconv,
                                                   pointwise_weight_keys)
from ov3dseg_core.models.backbones.spunet import spconv
from upstream_checkpoints import (minkowski_conv, minkowski_conv_transpose, minkowski_offsets, mosaic3d_pointwise,
                                  scene, sparse)


def by_coords(x: spconv.SparseConvTensor, scale: int = 1) -> dict[tuple[int, ...], np.ndarray]:
    """{coordinate * scale: feature row} of a spconv output (its rows are in spconv's own order)."""
    coords = x.indices[:, 1:].numpy() * scale
    return {tuple(c): f for c, f in zip(coords, x.features.detach().double().numpy())}


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return np.allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_minkowski_offsets_run_x_fastest():
    assert minkowski_offsets(3, 1)[:4].tolist() == [[-1, -1, -1], [0, -1, -1], [1, -1, -1], [-1, 0, -1]]
    assert minkowski_offsets(2, 4)[[0, 1, 2, 4]].tolist() == [[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4]]


@pytest.mark.parametrize("size", [3, 5])
def test_submanifold_kernel_matches_minkowski(size):
    coords, _ = scene(0, 40, 5)
    rng = np.random.default_rng(size)
    feats, kernel = rng.standard_normal((40, 4)), rng.standard_normal((size**3, 4, 6))
    reference = minkowski_conv(coords, feats, kernel, size, tensor_stride=1)[1]
    conv = spconv.SubMConv3d(4, 6, size, padding=size // 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(minkowski_to_spconv(torch.from_numpy(kernel).float(), conv.weight.shape))
        out = conv(sparse(coords, feats)).features.double().numpy()
        assert close(out, reference)
        # Reading the offsets with z fastest (or any other order) is caught.
        wrong = torch.from_numpy(kernel).float().reshape(size, size, size, 4, 6).permute(4, 0, 1, 2, 3)
        conv.weight.copy_(wrong)
        assert not close(conv(sparse(coords, feats)).features.double().numpy(), reference)


def test_stride_two_and_transposed_kernels_match_minkowski():
    coords, _ = scene(1, 48, 6)
    rng = np.random.default_rng(2)
    feats, down_kernel, up_kernel = (rng.standard_normal((48, 4)), rng.standard_normal((8, 4, 5)),
                                     rng.standard_normal((8, 5, 3)))
    coarse, coarse_ref = minkowski_conv(coords, feats, down_kernel, 2, tensor_stride=1, stride=2)
    fine_ref = minkowski_conv_transpose(coarse, coarse_ref, up_kernel, coords, fine_stride=1)
    down = spconv.SparseConv3d(4, 5, 2, stride=2, bias=False, indice_key="d")
    up = spconv.SparseInverseConv3d(5, 3, 2, bias=False, indice_key="d")
    with torch.no_grad():
        down.weight.copy_(minkowski_to_spconv(torch.from_numpy(down_kernel).float(), down.weight.shape))
        up.weight.copy_(minkowski_to_spconv(torch.from_numpy(up_kernel).float(), up.weight.shape))
        y = down(sparse(coords, feats))
        got = by_coords(y, scale=2)  # ME keeps stride-2 coordinates as multiples of 2
        assert sorted(got) == sorted(map(tuple, coarse))
        assert close(np.stack([got[tuple(c)] for c in coarse]), coarse_ref)
        fine = by_coords(up(y))
        assert close(np.stack([fine[tuple(c)] for c in coords]), fine_ref)
        up.weight.copy_(up.weight.flip(1, 2, 3))  # offsets mirrored: caught
        fine = by_coords(up(y))
        assert not close(np.stack([fine[tuple(c)] for c in coords]), fine_ref)


def test_pointwise_matrix_matches_minkowski():
    coords, _ = scene(3, 30, 5)
    rng = np.random.default_rng(3)
    feats, matrix = rng.standard_normal((30, 6)), rng.standard_normal((6, 4))  # ME (C_in, C_out), out = in @ matrix
    conv = spconv.SubMConv3d(6, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(minkowski_to_spconv(torch.from_numpy(matrix).float(), conv.weight.shape))
        assert close(conv(sparse(coords, feats)).features.double().numpy(), feats @ matrix)
        # The KRSC reading of other kernels ([o, ..., i] = matrix[i, o]) is not what spconv's 1x1 path computes.
        conv.weight.copy_(torch.from_numpy(matrix).float().t().reshape(conv.weight.shape))
        assert not close(conv(sparse(coords, feats)).features.double().numpy(), feats @ matrix)


def test_mosaic3d_pointwise_weights_are_transposed_into_spconvs_reading():
    coords, _ = scene(4, 30, 5)
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((30, 6))
    weight, bias = torch.randn(4, 1, 1, 1, 6), torch.randn(4)  # Custom1x1Subm3d(6, 4) as saved by Mosaic3D
    reference = mosaic3d_pointwise(feats, weight, bias)
    conv = spconv.SubMConv3d(6, 4, 1, bias=True)
    with torch.no_grad():
        conv.bias.copy_(bias)
        conv.weight.copy_(weight)  # what loading the keys as they are does
        assert not close(conv(sparse(coords, feats)).features.double().numpy(), reference)
        conv.weight.copy_(out_in_pointwise_to_spconv(weight))
        assert close(conv(sparse(coords, feats)).features.double().numpy(), reference)


def test_pointwise_weight_keys_are_the_1x1_convs():
    from ov3dseg_core.models.backbones import Mosaic3DSpUNet34C

    keys = pointwise_weight_keys(Mosaic3DSpUNet34C())
    assert keys == [f"dec.{s}.block0.proj_conv.weight" for s in range(4)] + ["final.weight"]
