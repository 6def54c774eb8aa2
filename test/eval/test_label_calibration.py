"""The labelled-class margin: offsets only the model's labelled names, recovers novel voxels that a base class
out-scores by a small cosine, is fitted for the best hIoU on validation maps, and is what MapSegmenter labels with."""
import numpy as np
import torch

from ov3dseg_core.eval.label_calibration import SceneCosines, fit_labelled_margin, report_at
from ov3dseg_core.eval.splits import Split
from ov3dseg_core.mapping.voxel_map import VoxelMap, VoxelMapConfig
from ov3dseg_core.models.map_segmenter import MapSegmenter, label_offsets

SPLIT = Split(name="toy", dataset="toy", classes=("chair", "table", "sofa"), base=("chair", "table"),
              novel=("sofa",))
VOXEL = 0.1


def toy_scene() -> SceneCosines:
    """30 voxels in a row: 10 chair, 10 table, 10 sofa. Chair and table voxels score their class 0.8 and the others
    at most 0.65 (chair voxels score sofa 0.65); sofa voxels score sofa 0.70 but chair 0.75 (a base class over-scored by 0.05)."""
    points = (np.stack([np.arange(30), np.zeros(30), np.zeros(30)], axis=1) + 0.5) * VOXEL
    labels = np.repeat([0, 1, 2], 10)
    voxel_map = VoxelMap(VoxelMapConfig(voxel_size=VOXEL))
    voxel_map.integrate(points.astype(np.float32))
    order = np.argsort(voxel_map.positions()[:, 0])
    cosines = np.empty((30, 3), np.float32)
    cosines[order] = np.repeat([[0.8, 0.6, 0.65], [0.65, 0.8, 0.5], [0.75, 0.6, 0.7]], 10, axis=0)
    return SceneCosines(voxel_map, cosines, np.ones(30, bool), points, labels, list(SPLIT.classes))


def test_offsets_touch_only_the_labelled_names():
    offsets = label_offsets(["Chair", "sofa", " table "], ["chair", "table"], 0.1)
    assert offsets.dtype == np.float32 and np.allclose(offsets, [-0.1, 0.0, -0.1])
    assert np.all(label_offsets(["chair"], ["chair"], 0.0) == 0)


def test_margin_recovers_novel_voxels_and_is_fitted_for_hiou():
    scene = toy_scene()
    plain = report_at([scene], SPLIT, SPLIT.base, 0.0).metrics
    assert plain.novel_miou == 0.0 and plain.hiou == 0.0  # every sofa voxel goes to chair
    margin, table = fit_labelled_margin([scene], SPLIT, SPLIT.base, margins=(0.0, 0.03, 0.06, 0.12, 0.2))
    assert margin == 0.06  # 0.03 is not enough, 0.12 still keeps the base voxels, 0.2 loses them; ties -> smaller
    fitted = report_at([scene], SPLIT, SPLIT.base, margin).metrics
    assert fitted.novel_miou == 1.0 and fitted.base_miou == 1.0
    assert [row["margin"] for row in table] == [0.0, 0.03, 0.06, 0.12, 0.2]
    assert table[-1]["hiou"] < 1.0


class _Features(torch.nn.Module):
    cfg = type("cfg", (), {"prompt_template": "{}"})


class _Text:
    """Names -> fixed unit vectors (one axis per name)."""

    axes = {"chair": 0, "table": 1, "sofa": 2}

    def encode(self, texts):
        return torch.eye(3)[[self.axes[t] for t in texts]]


def test_map_segmenter_labels_with_its_margin():
    features = np.array([[0.75, 0.0, 0.70], [0.9, 0.0, 0.1]], np.float32)  # a sofa voxel, a chair voxel
    plain = MapSegmenter(_Features(), ["chair", "table"], _Text())
    calibrated = MapSegmenter(_Features(), ["chair", "table"], _Text(), labelled_margin=0.1)
    assert plain.classify(features, ["chair", "table", "sofa"])[0].tolist() == [0, 0]
    labels, scores = calibrated.classify(features, ["chair", "table", "sofa"])
    assert labels.tolist() == [2, 0]
    assert np.allclose(scores, calibrated.cosines(features, ["sofa", "chair"]).numpy()[[0, 1], [0, 1]])
