"""XMask3D live in the node: an xmask3d_tiny checkpoint (random weights, saved as training saves it) replayed over a
short simulated bag by ``ov3dseg eval BAG --model CKPT``: the 2D branch runs on the key frames the keyframe_*
parameters pick, the map gets CLIP-space features, and report.json says which model ran and how often each branch
did. Also the model's text space answering /query and labelling the map."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.mapping.map_file import load_map
from ov3dseg_core.models.xmask3d import build_xmask3d
from ov3dseg_core.training.checkpoint import Checkpoint, save_checkpoint
from ov3dseg_core.training.xmask3d import checkpoint_config, load_train_config
from ov3dseg_ros.replay import replay_bag
from ros_rig import sim_room_bag

FRAMES = 4
PARAMS = {"model_rate_hz": 0.0, "model_window_radius": 8.0, "lidar_topics": []}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_xmask3d("xmask3d_tiny")
    path = tmp_path_factory.mktemp("xmask3d") / "last.safetensors"
    save_checkpoint(path, Checkpoint(model.state_dict(), checkpoint_config(model, load_train_config("xmask3d_tiny")),
                                     model.base_classes))
    return path


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return sim_room_bag(tmp_path_factory.mktemp("bag"), 300_003, FRAMES, 160, 120)[1]


def test_eval_runs_the_2d_branch_on_every_key_frame(checkpoint, bag, ros_domain, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**PARAMS, "keyframe_min_translation": 0.0}))  # every frame is a key frame
    out = tmp_path / "report"
    assert cli_main(["eval", str(bag), "--out", str(out), "--model", str(checkpoint), "--split", "sim_b15n4",
                     "--params", str(params)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == {"name": str(checkpoint), "kind": "2d+3d", "stages": {"2d": FRAMES, "3d": FRAMES}}
    assert "kind 2d+3d" in (out / "report.md").read_text()
    voxel_map = load_map(out / "map.safetensors")
    assert voxel_map.config.feature_dim == 32  # the tiny CLIP's space
    assert (voxel_map.feature_weights() > 0).mean() > 0.95
    assert report["coverage"] > 0.95 and len(report["query"]["per_class"]) == 19


def test_keyframe_parameters_pick_the_2d_frames_and_queries_use_clip(checkpoint, bag, ros_domain):
    params = {**PARAMS, "model": str(checkpoint), "keyframe_min_translation": 100.0, "keyframe_min_rotation": 180.0,
              "keyframe_max_interval_s": 0.0}  # only the first frame is a key frame
    result = replay_bag(bag, params=params, progress=False, domain_id=ros_domain, queries=["wall"])
    assert result.frames_integrated == FRAMES and result.model_passes == {"2d": 1, "3d": FRAMES}
    stage = result.model
    assert stage.kind == "2d+3d" and stage.text_encoder.name.startswith("open_clip")
    (_, answer), = result.queries
    assert answer.success, answer.message  # answered against the 32-d map features: CLIP text, not MiniLM (384-d)
