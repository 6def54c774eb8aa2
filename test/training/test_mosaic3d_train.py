"""Mosaic3D training: Eq. 4 falls on a fixed batch of a lifted scene; ``ov3dseg train`` (data engine, encoder,
decoder) then ``ov3dseg evaluate`` end to end on a tiny simulated scene; the checkpoint gives objects a text query
can rank."""
import json

import numpy as np
import torch
import yaml

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.models.map_segmenter import MapSegmenter
from ov3dseg_core.models.methods.mosaic3d import Mosaic3D, Mosaic3DConfig, voxel_objects
from ov3dseg_core.models.methods.mosaic3d.data_engine import EngineConfig, scene_dataset
from ov3dseg_core.models.methods.mosaic3d.decoder import DecoderConfig
from ov3dseg_core.models.methods.mosaic3d.training import MaskCaptionWindowDataset, collate_mask_captions
from ov3dseg_core.models.superpoints import SuperpointConfig
from ov3dseg_core.training.checkpoint import load_checkpoint
from ov3dseg_core.training.map_windows import MapWindowConfig, cached_fused_scene

TINY = {"type": "SpUNet-v1m3", "base_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 16, 8],
        "layers": [1] * 8, "conditions": ["ScanNet", "ARKitScenes", "Matterport3D", "Structured3D", "ScanNetPP"],
        "context_channels": 8, "context_table": True}
DECODER = {"d_model": 16, "heads": 2, "layers": 1, "ffn": 32, "queries": 8, "attention_points": 512}


def test_region_loss_and_decoder_loss_fall(small_scene, minilm, tmp_path):
    torch.manual_seed(0)
    fused = cached_fused_scene(small_scene, 0.05, tmp_path)
    data = scene_dataset(small_scene, fused, EngineConfig(frame_stride=1), SuperpointConfig(max_size=300), tmp_path, 0)
    windows = MapWindowConfig(max_voxels=1200, whole_room_prob=0.0, augment=False)
    dataset = MaskCaptionWindowDataset([fused], [data], [minilm.encode(list(data["captions"]))], minilm.encode,
                                       windows)
    batch = collate_mask_captions([dataset[0]])
    assert not any("photo of" in c for c in data["captions"])  # free-form phrases, never the eval template
    assert len(batch["mask_text"]) > 3 and bool(batch["proposal_has_text"].any())
    model = Mosaic3D(Mosaic3DConfig(backbone=TINY, decoder=DecoderConfig(**DECODER)), torch.eye(384)[:4])
    for stage, params in (("encoder", model.encoder_parameters()), ("decoder", model.decoder.parameters())):
        if stage == "decoder":
            model.freeze_encoder()
        optimizer = torch.optim.Adam(list(params), lr=1e-2)
        losses = []
        for step in range(10):
            loss = model.train().training_losses(batch, step)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < 0.8 * losses[0], (stage, losses)


def test_train_then_evaluate_mosaic3d(tmp_path):
    config = {
        "split": "sim_b15n4",
        "method": {"type": "Mosaic3D", "backbone": TINY, "decoder": DECODER, "decoder_steps": 2},
        "data": {"sim_seed_start": 4, "sim_scenes": 1, "val_seed_start": 9, "val_scenes": 1,
                 "heldout_seed_start": 7, "heldout_scenes": 1,
                 "sim_frames": 4, "sim_width": 160, "sim_height": 120, "cache_dir": str(tmp_path / "cache")},
        "windows": {"max_voxels": 2000, "samples_per_scene": 2},
        "trainer": {"max_steps": 3, "batch_size": 1, "log_every": 1, "checkpoint_every": 3, "warmup_steps": 0},
        "out_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "mosaic3d.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["train", str(path), "--threads", "1", "--no-eval"]) == 0
    stats = json.loads((tmp_path / "run" / "data_engine.json").read_text())
    assert stats["scenes"] == 1 and stats["captions"] > 0 and stats["tokens"] >= stats["captions"]
    assert load_checkpoint(tmp_path / "run" / "encoder" / "last.safetensors").step == 3
    ckpt = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert ckpt.step == 2 and ckpt.config["method"]["type"] == "Mosaic3D"
    segmenter = MapSegmenter.from_checkpoint(tmp_path / "run" / "last.safetensors")
    assert isinstance(segmenter.model, Mosaic3D) and segmenter.feature_dim == 384
    assert cli_main(["evaluate", str(path), str(tmp_path / "run" / "last.safetensors"), "--validation",
                     "--out", str(tmp_path / "eval")]) == 0
    report = json.loads(next((tmp_path / "eval").glob("*.json")).read_text())
    assert "miou" in json.dumps(report).lower()
    instances = json.loads((tmp_path / "eval" / "instances.json").read_text())
    assert {"mAP", "AP50", "AP25", "novel_AP50", "seconds_per_scene"} <= set(instances)
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 40, (500, 3)), axis=0)
    objects = voxel_objects(segmenter.model, keys, keys * 0.05 + 0.025, rng.integers(0, 255, (len(keys), 3)),
                            score_threshold=0.0, min_points=1)
    assert objects.masks.shape[1] == len(keys) and len(objects.scores) == len(objects.embeddings)
    order, cosine = objects.rank(segmenter.embed(["chair"])[0])
    assert len(order) == len(objects.scores)
