"""Evaluation harness: confusion matrices, mIoU / mAcc / f-mIoU / base-novel hIoU, category splits, voxel-to-point
matching and reports (JSON, markdown, PNG). The protocol is documented in metrics.py, confusion.py and splits.py."""
from ov3dseg_core.eval.confusion import ConfusionMatrix
from ov3dseg_core.eval.evaluate import EvalReport, evaluate_labels, evaluate_map
from ov3dseg_core.eval.matching import match_points_to_voxels, voxel_purity
from ov3dseg_core.eval.metrics import SegmentationMetrics, compute_metrics
from ov3dseg_core.eval.splits import Split, SplitError, available_splits, load_split, name_mapping

__all__ = [
    "ConfusionMatrix", "EvalReport", "SegmentationMetrics", "Split", "SplitError", "available_splits",
    "compute_metrics", "evaluate_labels", "evaluate_map", "load_split", "match_points_to_voxels", "name_mapping",
    "voxel_purity",
]
