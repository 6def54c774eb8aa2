"""The 3D stage with an instance decoder (Mosaic3D, tiny random weights): each window pass also writes objects into
the map's instance layer, and a second pass over the same voxels keeps their ids; a model without a decoder
writes none."""
import numpy as np
import torch

from ov3dseg_core.mapping import VoxelMap, VoxelMapConfig
from ov3dseg_core.models.map_segmenter import MapSegmenter
from ov3dseg_core.models.methods.mosaic3d import Mosaic3D, Mosaic3DConfig
from ov3dseg_core.models.methods.mosaic3d.decoder import DecoderConfig
from ov3dseg_core.models.semantic_stage import MapStage

TINY = {"type": "SpUNet-v1m3", "base_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 16, 8],
        "layers": [1] * 8, "conditions": ["ScanNet", "ARKitScenes", "Matterport3D", "Structured3D", "ScanNetPP"],
        "context_channels": 8, "context_table": True}
DECODER = {"d_model": 16, "heads": 2, "layers": 1, "ffn": 32, "queries": 8, "attention_points": 512}


def room_map() -> VoxelMap:
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform([0, 0, 0], [3, 3, 0.05], (4000, 3)),  # floor
                             rng.uniform([1, 1, 0], [1.5, 1.5, 0.8], (1500, 3))]).astype(np.float32)  # a box
    colors = np.where(points[:, 2:3] > 0.06, [200, 30, 30], [90, 90, 90]).astype(np.uint8)
    vmap = VoxelMap(VoxelMapConfig(voxel_size=0.05, feature_dim=384))
    vmap.integrate(points, colors=colors)
    return vmap


def test_window_passes_write_instances_and_keep_their_ids():
    torch.manual_seed(0)
    model = Mosaic3D(Mosaic3DConfig(backbone=TINY, decoder=DecoderConfig(**DECODER)), torch.eye(384)[:2])
    stage = MapStage(MapSegmenter(model, ["floor", "box"], text_encoder=None), object_score=0.0)
    vmap = room_map()
    stage.update(vmap)
    ids = vmap.instances()
    assert (vmap.feature_weights() > 0).all() and (ids >= 0).any()
    table = vmap.instance_table()
    assert len(table) == len(np.unique(ids[ids >= 0])) and (table.passes == 1).all()
    stage.update(vmap)  # the same window again: the same objects, matched to their instances
    np.testing.assert_array_equal(vmap.instances(), ids)
    assert (vmap.instance_table().passes == 2).all()

    strict = room_map()  # no object scores above 1: object_score 1 keeps none
    MapStage(stage.segmenter, object_score=1.0).update(strict)
    assert (strict.feature_weights() > 0).all() and (strict.instances() == -1).all()


def test_a_model_without_an_instance_decoder_writes_no_instances():
    class Features(torch.nn.Module):
        cfg = type("cfg", (), {"prompt_template": "{}", "text_dim": 384})()

        def forward(self, data):
            return torch.nn.functional.normalize(torch.ones(len(data["grid_coord"]), 384), dim=-1)

    vmap = room_map()
    MapStage(MapSegmenter(Features(), ["floor"], text_encoder=None)).update(vmap)
    assert (vmap.feature_weights() > 0).all() and (vmap.instances() == -1).all()
