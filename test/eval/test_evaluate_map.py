"""evaluate_map on real VoxelMaps: the sanity law of issue 4 at core level, and label-space handling.

Sanity law: labelled points fused into a VoxelMap with their own labels give mIoU == 1 when every voxel holds
one class (the voxelisation bound, ``voxel_purity``, is then 1). Flipping a fraction f of point labels to a
uniformly random other class, with one point per voxel, predicts per-class accuracy 1 - f and, for L equally
frequent classes, per-class IoU (1 - f) / (1 + f) (each class loses f n points and receives f n from the others).
"""
import numpy as np
import pytest

from ov3dseg_core.eval.evaluate import evaluate_map
from ov3dseg_core.eval.splits import load_split

voxel_map_module = pytest.importorskip("ov3dseg_core.mapping.voxel_map")
VoxelMap, VoxelMapConfig = voxel_map_module.VoxelMap, voxel_map_module.VoxelMapConfig

VOXEL = 0.1


def _points_in_voxels(keys: np.ndarray, per_voxel: int, rng) -> np.ndarray:
    """per_voxel points strictly inside each voxel (1 cm margin), (M * per_voxel, 3) float32."""
    offsets = rng.uniform(0.1, 0.9, (len(keys), per_voxel, 3))
    return ((keys[:, None, :] + offsets) * VOXEL).reshape(-1, 3).astype(np.float32)


def _grid_keys(n: int) -> np.ndarray:
    i, j, k = np.meshgrid(np.arange(-n, n), np.arange(-n, n), np.arange(2), indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)


def _fused_map(points, labels, num_labels):
    voxel_map = VoxelMap(VoxelMapConfig(voxel_size=VOXEL, num_labels=num_labels))
    voxel_map.integrate(points, labels=labels)
    return voxel_map


def test_own_labels_give_miou_one_when_voxels_are_pure():
    rng = np.random.default_rng(0)
    keys = _grid_keys(10)
    voxel_class = ((keys[:, 0] // 4) + (keys[:, 1] // 4)) % 4  # 4 classes in blocks of voxels
    points = _points_in_voxels(keys, 5, rng)
    labels = np.repeat(voxel_class, 5).astype(np.int32)
    names = ["wall", "floor", "chair", "table"]
    report = evaluate_map(_fused_map(points, labels, 4), points, labels, names)
    assert report.metrics.miou == 1.0 and report.metrics.macc == 1.0
    assert report.coverage == 1.0 and report.voxel_purity == 1.0
    assert report.num_points == len(points) and report.voxel_size == pytest.approx(VOXEL)


def test_label_flips_lower_accuracy_as_predicted():
    rng = np.random.default_rng(1)
    f, num_classes = 0.3, 5
    keys = _grid_keys(50)  # 20000 voxels, one point each
    points = _points_in_voxels(keys, 1, rng)
    labels = rng.permutation(np.arange(len(points)) % num_classes).astype(np.int32)
    flip = rng.random(len(points)) < f
    corrupted = labels.copy()
    corrupted[flip] = (labels[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes  # another class
    report = evaluate_map(_fused_map(points, corrupted, num_classes), points, labels, list("abcde"))
    # binomial std of a class accuracy: sqrt(f (1 - f) / 4000) ~ 0.007
    np.testing.assert_allclose(report.metrics.acc, 1 - f, atol=0.03)
    np.testing.assert_allclose(report.metrics.iou, (1 - f) / (1 + f), atol=0.03)
    assert report.coverage == 1.0


def test_mixed_voxels_are_bounded_by_voxel_purity():
    rng = np.random.default_rng(2)
    keys = _grid_keys(6)
    points = _points_in_voxels(keys, 4, rng)
    labels = np.tile(np.array([0, 0, 0, 1], dtype=np.int32), len(keys))  # 3:1 in every voxel
    report = evaluate_map(_fused_map(points, labels, 2), points, labels, ["a", "b"])
    assert report.voxel_purity == pytest.approx(0.75)
    assert report.metrics.acc[0] == 1.0 and report.metrics.acc[1] == 0.0  # majority wins each voxel
    assert report.metrics.iou[0] == pytest.approx(0.75)


def test_missing_voxels_count_against_coverage_and_recall():
    rng = np.random.default_rng(3)
    keys = _grid_keys(5)
    points = _points_in_voxels(keys, 2, rng)
    labels = np.repeat(keys[:, 0] >= 0, 2).astype(np.int32)
    mapped = np.repeat(keys[:, 1] >= 0, 2)  # only half of the scene was seen
    voxel_map = _fused_map(points[mapped], labels[mapped], 2)
    report = evaluate_map(voxel_map, points, labels, ["a", "b"])
    assert report.coverage == pytest.approx(0.5)
    np.testing.assert_allclose(report.metrics.acc, [0.5, 0.5])
    np.testing.assert_allclose(report.metrics.iou, [0.5, 0.5])  # no false positives, half the points missed


def test_map_vocabulary_mapped_by_name_and_split():
    rng = np.random.default_rng(4)
    keys = _grid_keys(4)
    points = _points_in_voxels(keys, 2, rng)
    gt_names = ["wall", "sofa", "other furniture"]
    gt = np.repeat(np.where(keys[:, 0] < 0, 0, np.where(keys[:, 1] < 0, 1, 2)), 2).astype(np.int32)
    map_names = ["sofa", "lamp", "wall", "other furniture"]  # another id order, plus a class the GT lacks
    map_labels = np.array([2, 0, 3])[gt]
    lamp = np.repeat(rng.random(len(keys)) < 0.2, 2)  # whole voxels labelled "lamp"
    map_labels[lamp] = 1
    voxel_map = _fused_map(points, map_labels, len(map_names))
    with pytest.raises(ValueError, match="map_label_names"):
        evaluate_map(voxel_map, points, gt, gt_names)
    report = evaluate_map(voxel_map, points, gt, gt_names, split=load_split("sim_b15n4"), map_label_names=map_names)
    assert "other furniture" not in report.class_names  # ignored by the split
    data = report.to_dict()
    for cls in (0, 1):  # "lamp" voxels are misses of their ground-truth class, nothing else is wrong
        expected = 1.0 - lamp[gt == cls].mean()
        assert data["per_class_acc"][gt_names[cls]] == pytest.approx(expected)
        assert data["per_class_iou"][gt_names[cls]] == pytest.approx(expected)
    assert data["num_points"] == int(np.sum(gt != 2))
    assert data["base_miou"] == pytest.approx(data["per_class_iou"]["wall"])
    assert data["novel_miou"] == pytest.approx(data["per_class_iou"]["sofa"])
    assert data["per_class_iou"]["chair"] is None


def test_points_on_voxel_faces_find_the_voxel_the_map_put_them_in():
    rng = np.random.default_rng(5)
    for voxel_size in (0.05, 0.02, 0.03):
        on_faces = rng.integers(-100, 100, (5000, 3)) * voxel_size + rng.integers(-3, 4, (5000, 3)) * 1e-7
        points = on_faces.astype(np.float32)
        labels = np.zeros(len(points), dtype=np.int32)
        voxel_map = VoxelMap(VoxelMapConfig(voxel_size=voxel_size, num_labels=1))
        voxel_map.integrate(points, labels=labels)
        report = evaluate_map(voxel_map, points, labels, ["wall"])
        assert report.coverage == 1.0 and report.metrics.miou == 1.0
