"""The query benchmark's per-class records (present, found, top-1 within 2 voxels) and pooled summary numbers."""
import numpy as np
import pytest

from ov3dseg_core.eval.query_benchmark import class_record, markdown_query, query_report, summarize

VOXEL = 0.05
CHAIR = np.array([[1.0, 1.0, 0.5], [1.2, 1.0, 0.5]])


def test_top1_is_correct_within_two_voxels_of_a_point_of_the_class():
    near = class_record(CHAIR, True, (1.0, 1.0, 0.5 + 2 * VOXEL - 1e-6), 3, 0.97, 0.8, VOXEL)
    assert near == {"present": True, "found": True, "top1_correct": True, "num_objects": 3, "score": 0.97,
                    "confidence": 0.8}
    assert class_record(CHAIR, True, (1.1, 1.0, 0.5 + 2.5 * VOXEL), 1, 0.9, 0.5, VOXEL)["top1_correct"] is False
    missed = class_record(CHAIR, False, None, 0, 0.31, None, VOXEL)
    assert missed["top1_correct"] is None and missed["confidence"] is None and not missed["found"]
    false_alarm = class_record(np.zeros((0, 3)), True, (0.0, 0.0, 0.0), 1, 0.7, 0.2, VOXEL)
    assert false_alarm["present"] is False and false_alarm["top1_correct"] is False


def test_summary_pools_present_absent_and_top1():
    records = [class_record(CHAIR, True, CHAIR[0], 1, 0.9, 0.9, VOXEL),    # present, found, right
               class_record(CHAIR, True, (5.0, 5.0, 5.0), 2, 0.9, 0.4, VOXEL),  # present, found, wrong place
               class_record(CHAIR, False, None, 0, 0.4, None, VOXEL),      # present, missed
               class_record(np.zeros((0, 3)), True, (0, 0, 0), 1, 0.8, 0.1, VOXEL),  # absent, false alarm
               *[class_record(np.zeros((0, 3)), False, None, 0, 0.2, None, VOXEL)] * 3]  # absent, silent
    assert summarize(records) == pytest.approx({"present_recall": 2 / 3, "absent_false_alarm": 1 / 4,
                                                "top1_precision": 1 / 2})
    assert summarize(records[4:]) == {"present_recall": None, "absent_false_alarm": 0.0, "top1_precision": None}
    section = query_report({"chair": records[0], "desk": records[2], "sofa": records[3]})
    assert section["present_recall"] == 0.5 and section["absent_false_alarm"] == 1.0
    assert section["top1_precision"] == 1.0 and list(section["per_class"]) == ["chair", "desk", "sofa"]
    table = markdown_query(section)
    assert "| 50.0 | 100.0 | 100.0 |" in table
    assert "| desk | yes | no | - | 0 | 0.40 | - |" in table and "| sofa | no | yes | no | 1 | 0.80 | 0.10 |" in table
