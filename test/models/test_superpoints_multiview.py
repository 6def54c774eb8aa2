"""Shared pieces of SAS and GeoGuide: scatter pooling, superpoints, multi-view fusion with the depth test."""
import numpy as np
import torch

from ov3dseg_core.data.frames import RGBDFrame
from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.models.multiview import PixelFeatures, fuse_multiview
from ov3dseg_core.models.pooling import scatter_mean, scatter_softmax, scatter_weighted_mean
from ov3dseg_core.models.superpoints import mesh_graph, voxel_graph, voxel_superpoints


def test_scatter_pooling():
    src = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    index = torch.tensor([0, 0, 2])
    assert torch.allclose(scatter_mean(src, index, 3), torch.tensor([[2.0, 1.0], [0.0, 0.0], [5.0, 5.0]]))
    w = torch.tensor([1.0, 3.0, 1.0])
    assert torch.allclose(scatter_weighted_mean(src, w, index, 3)[0], torch.tensor([2.5, 1.5]))
    soft = scatter_softmax(torch.tensor([0.0, float(np.log(3.0)), 7.0]), index, 3)
    assert torch.allclose(soft, torch.tensor([0.25, 0.75, 1.0]))


def test_graphs():
    keys = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 1], [3, 0, 0]])
    edges = {tuple(sorted(e)) for e in voxel_graph(keys).tolist()}
    assert edges == {(0, 1), (0, 2), (1, 2)}
    assert mesh_graph(np.array([[0, 1, 2], [2, 1, 3]])).tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]


def test_two_planes_give_two_superpoints():
    g = np.arange(20)
    floor = np.stack(np.meshgrid(g, g, [0], indexing="ij"), -1).reshape(-1, 3)       # z = 0
    wall = np.stack(np.meshgrid([0], g, g[1:], indexing="ij"), -1).reshape(-1, 3)    # x = 0, above the floor
    keys = np.concatenate([floor, wall])
    sp = voxel_superpoints(keys, (keys + 0.5) * 0.05, k=0.05, min_size=20)
    on_wall = np.r_[np.zeros(len(floor), bool), np.ones(len(wall), bool)]
    interior = np.r_[floor[:, 0] >= 3, wall[:, 2] >= 3]  # voxel normals mix the planes within 2 voxels of the crease
    floor_ids, wall_ids = np.unique(sp[~on_wall & interior]), np.unique(sp[on_wall & interior])
    assert len(floor_ids) == 1 and len(wall_ids) == 1 and floor_ids[0] != wall_ids[0]
    assert len(np.unique(sp)) <= 4  # plus at most the crease band, on either side
    capped = voxel_superpoints(keys, (keys + 0.5) * 0.05, k=0.05, min_size=20, max_size=100)
    assert np.bincount(capped).max() <= 100 and len(np.unique(capped)) >= 2 * len(floor) // 100
    assert all(len(np.unique(sp[capped == s])) == 1 for s in np.unique(capped))  # cuts of the same segments


def test_colour_edges_split_a_picture_from_its_wall():
    """A dark 6 x 6 picture in a white wall plane: one segment by normals alone, its own segment with colour."""
    g = np.arange(20)
    keys = np.stack(np.meshgrid([0], g, g, indexing="ij"), -1).reshape(-1, 3)
    picture = (keys[:, 1] >= 7) & (keys[:, 1] < 13) & (keys[:, 2] >= 7) & (keys[:, 2] < 13)
    colors = np.where(picture[:, None], 40, 235).astype(np.uint8).repeat(3, axis=1)
    positions = (keys + 0.5) * 0.05
    plain = voxel_superpoints(keys, positions, k=0.05, min_size=20)
    assert len(np.unique(plain)) == 1
    coloured = voxel_superpoints(keys, positions, k=0.05, min_size=20, colors=colors, color_weight=1.0)
    assert len(np.unique(coloured[picture])) == 1 and len(np.unique(coloured[~picture])) == 1
    assert coloured[picture][0] != coloured[~picture][0]


def _frame(depth_m: float) -> RGBDFrame:
    camera = PinholeCamera(width=8, height=6, fx=8.0, fy=8.0, cx=3.5, cy=2.5)
    return RGBDFrame(None, np.full((6, 8), depth_m, np.float32), camera, pose=np.eye(4))


def test_depth_test_rejects_occluded_points():
    points = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0], [0.0, 0.0, 2.3]])  # on the surface, behind it, 15% off
    feature = torch.ones(6, 8, 2)
    frames = [_frame(2.0), _frame(2.0)]
    _, count = fuse_multiview(points, frames, lambda i, f: PixelFeatures.dense(feature * (i + 1)), rel_tol=0.2)
    assert count.tolist() == [2, 0, 2]
    _, count = fuse_multiview(points, frames, lambda i, f: PixelFeatures.dense(feature), rel_tol=0.02)
    assert count.tolist() == [2, 0, 0]                                        # Matterport-like tolerance
    feats, count = fuse_multiview(points, frames, lambda i, f: PixelFeatures.dense(feature * (i + 1)),
                                  rel_tol=None, stride=2)
    assert count.tolist() == [1, 1, 1] and torch.allclose(feats, torch.ones(3, 2))  # no test; frame 0 only


def test_multiview_mean_and_coarse_grids():
    frames = [_frame(2.0), _frame(2.0)]
    point = np.array([[0.0, 0.0, 2.0]])
    coarse = PixelFeatures(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0, -1], [-1, 1]]))  # 2 x 2 grid
    feats, count = fuse_multiview(point, frames, lambda i, f: coarse if i == 0 else
                                  PixelFeatures.dense(torch.tensor([3.0, 3.0]).expand(6, 8, 2)))
    # the point's pixel (u 4, v 2) lies in cell (row 0, column 1) of the 2 x 2 grid, which has no feature
    assert count.tolist() == [1] and torch.allclose(feats, torch.tensor([[3.0, 3.0]]))
