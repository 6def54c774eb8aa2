"""SAS and GeoGuide live: a tiny checkpoint of each (untrained weights, written as ``ov3dseg train`` writes them:
the method mapping, the vocabulary, the state dict) is loaded by the node from the ``model`` parameter, a short
simulated living room is replayed through the real node graph, per-voxel features are written and /query answers
from them. GeoGuide's frozen backbone is the embedded default's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ov3dseg_core.config import to_dict
from ov3dseg_core.eval.splits import load_split
from ov3dseg_core.mapping.map_file import load_map
from ov3dseg_core.models.map_segmenter import DEFAULT_CHECKPOINT, MapSegmenter
from ov3dseg_core.models.methods import SAS, GeoGuide, GeoGuideConfig, SASConfig
from ov3dseg_core.training.checkpoint import Checkpoint, save_checkpoint
from ov3dseg_ros.replay import replay_bag
from ros_rig import sim_room_bag

TINY = {"type": "SpUNet14A", "base_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 16, 8]}


def method_checkpoint(name: str, path) -> str:
    """An untrained SAS or GeoGuide over the split's vocabulary (random unit class embeddings), saved like
    ``ov3dseg train`` saves it."""
    torch.manual_seed(0)
    vocabulary = list(load_split("sim_b15n4").evaluated)
    vocab_text = torch.nn.functional.normalize(torch.randn(len(vocabulary), 384), dim=-1)
    if name == "SAS":
        config, extra = SASConfig(backbone=TINY), {}
    else:
        config, extra = GeoGuide.resolve(GeoGuideConfig(hidden=16))
    model = {"SAS": SAS, "GeoGuide": GeoGuide}[name](config, vocab_text, **extra)
    method = {"type": name, **to_dict(config), "vocabulary": vocabulary}
    save_checkpoint(path, Checkpoint(model.state_dict(), {"method": method}, vocabulary, step=1))
    return str(path)


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    return sim_room_bag(tmp_path_factory.mktemp("methods_live"), 300_003, 4, 256, 192)[1]


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="GeoGuide's backbone is the embedded default's")
@pytest.mark.parametrize("method", ["SAS", "GeoGuide"])
def test_method_checkpoint_runs_in_the_node(method, room, ros_domain, tmp_path):
    ckpt = method_checkpoint(method, tmp_path / f"{method}.safetensors")
    params = {"model": ckpt, "model_rate_hz": 0.0, "model_window_radius": 8.0, "lidar_topics": []}
    result = replay_bag(room, params=params, save_map=str(tmp_path / "map.safetensors"), progress=False,
                        domain_id=ros_domain, queries=["chair", ""])
    assert result.frames_integrated == 4 and result.frames_dropped == 0
    assert sum(result.model_passes.values()) > 0
    voxel_map = load_map(result.map_path)
    assert voxel_map.config.feature_dim == 384
    written = voxel_map.feature_weights() > 0
    assert written.mean() > 0.95  # the model covered the mapped room
    features = voxel_map.features()[written].astype(np.float32)
    assert np.isfinite(features).all() and np.median(np.linalg.norm(features, axis=1)) > 0.9  # unit per pass
    # the written features are this method's: the same checkpoint offline on the final map points the same way
    offline = MapSegmenter.from_checkpoint(ckpt).features(voxel_map.keys(), voxel_map.positions(),
                                                          voxel_map.colors()).numpy()[written]
    norms = np.maximum(np.linalg.norm(features, axis=1) * np.linalg.norm(offline, axis=1), 1e-6)
    assert np.median((features * offline).sum(1) / norms) > 0.8

    answers = dict(result.queries)
    assert answers["chair"].success, answers["chair"].message  # decided from the method's voxel features
    assert not answers[""].success and "empty" in answers[""].message
