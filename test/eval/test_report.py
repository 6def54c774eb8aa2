"""Report files: JSON keys and values, markdown table, PNG plots."""
import json

import numpy as np
import pytest

from ov3dseg_core.eval.evaluate import evaluate_labels
from ov3dseg_core.eval.report import markdown_table, write_report
from ov3dseg_core.eval.splits import load_split
from ov3dseg_core.labels import SCANNET20

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def split_report():
    rng = np.random.default_rng(3)
    gt = rng.integers(-1, 20, 4000)
    gt[gt == SCANNET20.index("bathtub")] = 0  # bathtub absent -> null
    pred = np.where(rng.random(4000) < 0.7, gt, rng.integers(-1, 20, 4000))
    return evaluate_labels(gt, pred, SCANNET20, split=load_split("sim_b15n4"))


def test_json_keys_values_and_pngs(tmp_path, split_report):
    paths = write_report(split_report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    for key in ("miou", "macc", "fmiou", "fmacc", "per_class_iou", "per_class_acc", "split", "base_miou",
                "novel_miou", "hiou", "num_points", "coverage", "voxel_size"):
        assert key in data
    assert data["split"] == "sim_b15n4"
    assert len(data["per_class_iou"]) == 19 and "other furniture" not in data["per_class_iou"]
    assert data["per_class_iou"]["bathtub"] is None
    for key in ("miou", "macc", "fmiou", "fmacc", "base_miou", "novel_miou", "hiou"):
        assert 0.0 <= data[key] <= 1.0
    assert all(v is None or 0.0 <= v <= 1.0 for v in data["per_class_iou"].values())
    assert data["num_points"] == int(np.sum(split_report.confusion))
    assert data["miou"] == pytest.approx(np.nanmean(split_report.metrics.iou))
    for name in ("per_class_iou", "confusion"):
        blob = paths[name].read_bytes()
        assert blob.startswith(PNG_SIGNATURE) and len(blob) > 5000
    assert (tmp_path / "out" / "report.md").read_text() == markdown_table(split_report)


def test_markdown_table_lists_every_class_with_its_group(split_report):
    text = markdown_table(split_report)
    assert "hIoU" in text and "split: sim_b15n4" in text
    assert "| sofa | novel |" in text and "| wall | base |" in text
    assert "| bathtub | base | n/a | n/a | 0 |" in text
    assert f"{100 * split_report.metrics.miou:.1f}" in text


def test_report_without_split_has_no_split_keys(tmp_path):
    report = evaluate_labels(np.array([0, 1, 1]), np.array([0, 1, 0]), ["wall", "chair"])
    data = report.to_dict()
    assert "hiou" not in data and "split" not in data
    assert data["per_class_iou"] == {"wall": 0.5, "chair": 0.5}
    paths = write_report(report, tmp_path)
    assert paths["confusion"].stat().st_size > 0
