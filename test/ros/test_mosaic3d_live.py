"""Mosaic3D objects live in the node: a tiny Mosaic3D checkpoint (random weights, saved as training saves it)
replayed over a short simulated bag by ``ov3dseg eval BAG --model CKPT``: its instance decoder runs after each
window pass, the map keeps instances (an id per voxel, one embedding per instance), the report carries instance
metrics; a node started on that map publishes the instance ids in the semantic cloud's ``instance`` field and
answers /query from the instances (each hit is one whole instance)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.config import to_dict
from ov3dseg_core.mapping.map_file import load_map
from ov3dseg_core.models.methods.mosaic3d import Mosaic3D, Mosaic3DConfig
from ov3dseg_core.models.methods.mosaic3d.decoder import DecoderConfig
from ov3dseg_core.models.text import apply_template, build_text_encoder
from ov3dseg_core.msgs.pointcloud2 import pointcloud2_to_array
from ov3dseg_core.training.checkpoint import Checkpoint, save_checkpoint
from ov3dseg_core.training.config import TrainConfig
from ov3dseg_ros.query_client import QueryClient
from ros_rig import sim_room_bag, start_graph, wait_until

FRAMES = 4
TINY = {"type": "SpUNet-v1m3", "base_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 16, 8],
        "layers": [1] * 8, "conditions": ["ScanNet", "ARKitScenes", "Matterport3D", "Structured3D", "ScanNetPP"],
        "context_channels": 8, "context_table": True}
DECODER = {"d_model": 16, "heads": 2, "layers": 1, "ffn": 32, "queries": 8, "attention_points": 512}
VOCABULARY = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
              "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A Mosaic3D checkpoint as ``mosaic3d_trainer`` writes it: the method mapping (with its vocabulary) in the
    training config, the state dict with the vocabulary's prompt embeddings."""
    torch.manual_seed(0)
    mcfg = Mosaic3DConfig(backbone=TINY, decoder=DecoderConfig(**DECODER))
    embed = build_text_encoder({"type": mcfg.text_encoder}).encode
    model = Mosaic3D(mcfg, embed(apply_template(VOCABULARY, mcfg.prompt_template)).float())
    method = {"type": "Mosaic3D", **to_dict(mcfg), "vocabulary": VOCABULARY}
    config = to_dict(dataclasses.replace(TrainConfig(), method=method))
    path = tmp_path_factory.mktemp("mosaic3d") / "last.safetensors"
    save_checkpoint(path, Checkpoint(model.state_dict(), config, VOCABULARY))
    return path


@pytest.fixture(scope="module")
def evaluated(checkpoint, tmp_path_factory, ros_domain):
    out = tmp_path_factory.mktemp("eval")
    sim_room_bag(out, 300_002, FRAMES, 160, 120)  # 8 pieces of furniture in view of the frames
    params = out / "params.yaml"
    params.write_text(json.dumps({"model_rate_hz": 0.0, "model_window_radius": 8.0, "lidar_topics": []}))
    assert cli_main(["eval", str(out / "room.mcap"), "--out", str(out / "report"), "--model", str(checkpoint),
                     "--split", "sim_b15n4", "--params", str(params)]) == 0
    return out / "report"


def test_eval_reports_instance_metrics_of_the_live_map(evaluated):
    report = json.loads((evaluated / "report.json").read_text())
    assert report["model"]["kind"] == "3d" and report["model"]["stages"]["3d"] == FRAMES
    instances = report["instances"]
    assert {"mAP", "AP50", "AP25", "agnostic_AP25", "base_AP50", "novel_AP50"} <= set(instances)
    assert instances["map_instances"] >= 1 and instances["gt_instances"] >= 6  # furniture, walls and floor
    assert all(0.0 <= instances[k] <= 1.0 for k in ("mAP", "AP50", "AP25", "agnostic_AP25"))  # defined: things
    assert len(instances["per_class_AP50"]) >= 2
    assert "Instances (map:" in (evaluated / "report.md").read_text()
    voxel_map = load_map(evaluated / "map.safetensors")
    ids = voxel_map.instances()
    table = voxel_map.instance_table()
    assert (ids >= 0).mean() > 0.5 and len(np.unique(ids[ids >= 0])) == instances["map_instances"]
    assert table.passes.max() > 1  # an object kept its id over several window passes
    np.testing.assert_allclose(np.linalg.norm(table.embeddings, axis=1), 1.0, rtol=1e-5)


def test_node_publishes_instances_and_answers_queries_from_them(evaluated, checkpoint, ros_context):
    voxel_map = load_map(evaluated / "map.safetensors")
    ids = voxel_map.instances()
    sizes = np.bincount(ids[ids >= 0])
    graph, rig = start_graph(ros_context, {"model": str(checkpoint), "initial_map": str(evaluated /
                                                                                         "map.safetensors")})
    try:
        wait_until(lambda: rig.cloud is not None and rig.cloud.width == len(voxel_map), what="the semantic cloud")
        cloud = pointcloud2_to_array(rig.cloud)
        assert [f.name for f in rig.cloud.fields][-1] == "instance"
        np.testing.assert_array_equal(cloud["instance"], ids)  # one voxel order: the map's
        graph.mapper.text_encoder()
        with QueryClient(ros_context) as client:
            answers = [client.call(text) for text in ["object", "things", "stuff", "texture", *VOCABULARY]]
    finally:
        graph.shutdown()
    assert all(a.success for a in answers)
    hits = [hit for a in answers for hit in a.hits]
    # each instance's nearest name beats every negative: at least one query finds it
    assert hits and all(hit.num_voxels in set(sizes.tolist()) for hit in hits)  # whole instances, not voxel groups
    for answer in answers:
        assert answer.found == bool(answer.hits) and answer.threshold_used == pytest.approx(0.5)
