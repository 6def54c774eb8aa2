"""Confusion matrix and metrics on hand-computed examples."""
import numpy as np
import pytest

from ov3dseg_core.eval.confusion import ConfusionMatrix
from ov3dseg_core.eval.evaluate import evaluate_labels
from ov3dseg_core.eval.metrics import compute_metrics, harmonic_iou
from ov3dseg_core.eval.splits import Split

# gt 0 x4, 1 x3, 2 x3; one 0 -> 1, one 1 -> 2, one 2 -> 0
GT = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PRED = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])


def test_three_class_confusion_and_iou():
    cm = ConfusionMatrix(3)
    cm.update(GT, PRED)
    expected = np.array([[3, 1, 0, 0], [0, 2, 1, 0], [1, 0, 2, 0]])
    np.testing.assert_array_equal(cm.counts, expected)
    m = compute_metrics(cm.counts, ["a", "b", "c"])
    # IoU = TP / (GT + P - TP): a 3/(4+4-3), b 2/(3+3-2), c 2/(3+3-2)
    np.testing.assert_allclose(m.iou, [3 / 5, 2 / 4, 2 / 4])
    np.testing.assert_allclose(m.acc, [3 / 4, 2 / 3, 2 / 3])
    assert m.miou == pytest.approx((0.6 + 0.5 + 0.5) / 3)
    assert m.macc == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    assert m.base_miou is None and m.hiou is None


def test_accumulation_equals_one_update():
    cm = ConfusionMatrix(3)
    cm.update(GT[:5], PRED[:5])
    cm.update(GT[5:], PRED[5:])
    whole = ConfusionMatrix(3)
    whole.update(GT, PRED)
    np.testing.assert_array_equal(cm.counts, whole.counts)
    assert cm.counts.sum() == 10


def test_ignore_labels():
    # gt -1 points are skipped whatever is predicted; pred -1 is a miss of the gt class
    gt = np.r_[GT, -1, -1, 0]
    pred = np.r_[PRED, 1, 2, -1]
    cm = ConfusionMatrix(3)
    cm.update(gt, pred)
    assert cm.counts[0, 3] == 1 and cm.counts.sum() == 11
    m = compute_metrics(cm.counts, ["a", "b", "c"])
    # class a: GT 5, TP 3, predicted 4 -> 3 / 6; b and c unchanged
    np.testing.assert_allclose(m.iou, [3 / 6, 2 / 4, 2 / 4])
    assert m.acc[0] == pytest.approx(3 / 5)


def test_absent_classes_excluded_from_means():
    # class 2 neither present nor predicted; class 3 predicted but absent from the ground truth
    report = evaluate_labels(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 3]), ["a", "b", "c", "d"])
    m = report.metrics
    assert m.iou[0] == 1.0 and m.iou[1] == pytest.approx(0.5)
    assert np.isnan(m.iou[2]) and np.isnan(m.iou[3])
    assert m.miou == pytest.approx(0.75)
    d = report.to_dict()
    assert d["per_class_iou"] == {"a": 1.0, "b": 0.5, "c": None, "d": None}
    assert d["per_class_acc"]["c"] is None


def test_foreground_means_exclude_wall_floor_ceiling():
    names = ["wall", "floor", "chair", "table"]
    gt = np.array([0, 0, 1, 2, 2, 3])
    pred = np.array([0, 0, 1, 2, 3, 3])
    m = evaluate_labels(gt, pred, names).metrics
    # wall 1, floor 1, chair 1/2 (TP 1, GT 2, P 1), table 1/2 (TP 1, GT 1, P 2)
    assert m.miou == pytest.approx(0.75)
    assert m.fmiou == pytest.approx(0.5)
    assert m.macc == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert m.fmacc == pytest.approx(0.75)


SPLIT = Split(name="toy", dataset="toy", classes=("a", "b", "c", "d"), base=("a", "b"), novel=("c",), ignore=("d",))


def test_base_novel_hiou_with_ignored_class():
    gt = np.array([0, 0, 1, 1, 2, 2, 3])
    pred = np.array([0, 0, 1, 2, 2, 3, 0])
    report = evaluate_labels(gt, pred, ["a", "b", "c", "d"], split=SPLIT)
    assert report.class_names == ["a", "b", "c"]
    m = report.metrics
    # d's gt point is skipped (its 'a' prediction is no false positive); predicting d counts as a miss of c.
    # a: 1; b: TP 1, GT 2, P 1 -> 1/2; c: TP 1, GT 2, P 2 -> 1/3
    np.testing.assert_allclose(m.iou, [1.0, 0.5, 1 / 3])
    assert m.base_miou == pytest.approx(0.75)
    assert m.novel_miou == pytest.approx(1 / 3)
    assert m.hiou == pytest.approx(2 * 0.75 * (1 / 3) / (0.75 + 1 / 3))
    assert report.num_points == 6
    assert report.confusion[2, 3] == 1  # c predicted as the ignored d -> "missed" column


def test_hiou_zero_when_novel_zero():
    gt = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 0, 1])
    m = evaluate_labels(gt, pred, ["a", "b", "c", "d"], split=SPLIT).metrics
    assert m.novel_miou == 0.0 and m.base_miou > 0
    assert m.hiou == 0.0
    assert harmonic_iou(0.0, 0.0) == 0.0
    assert harmonic_iou(0.5, None) is None


def test_class_count_mismatch_raises():
    with pytest.raises(ValueError, match="for 3 classes; map"):
        evaluate_labels(np.array([0, 1]), np.array([0, 5]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="outside"):
        ConfusionMatrix(2).update(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        ConfusionMatrix(2).update(np.array([0.0, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="points"):
        ConfusionMatrix(2).update(np.array([0, 1]), np.array([0]))


def test_iou_matches_set_definition_on_random_labels():
    rng = np.random.default_rng(0)
    gt = rng.integers(-1, 6, 5000)
    pred = rng.integers(-1, 6, 5000)
    cm = ConfusionMatrix(6)
    cm.update(gt, pred)
    iou = compute_metrics(cm.counts, list("abcdef")).iou
    keep = gt >= 0
    for c in range(6):  # direct set-based definition on the kept points
        tp = np.sum((gt[keep] == c) & (pred[keep] == c))
        union = np.sum((gt[keep] == c) | (pred[keep] == c))
        assert iou[c] == pytest.approx(tp / union)
