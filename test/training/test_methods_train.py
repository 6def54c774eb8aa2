"""SAS and GeoGuide training: losses fall on a fixed batch; ``ov3dseg train`` then ``ov3dseg evaluate`` end to end
on a tiny simulated scene, the checkpoint loading through MapSegmenter like the default model."""
import json

import numpy as np
import torch
import yaml

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.models.map_segmenter import MapSegmenter
from ov3dseg_core.models.methods import SAS, GeoGuide, GeoGuideConfig, SASConfig
from ov3dseg_core.models.methods.data import collate_distill
from ov3dseg_core.training.checkpoint import load_checkpoint

TINY = {"type": "SpUNet14A", "base_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 16, 8]}


def _sample(seed: int, n: int = 300, d: int = 8) -> dict:
    """A window: every other voxel of a 60 x 20 patch, superpoints by x-slab, a 2D target per slab plus noise."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(n)
    grid = torch.stack([i % 30 * 2, i // 30 * 2, torch.zeros_like(i)], 1)
    superpoint = grid[:, 0] // 16
    target = torch.nn.functional.normalize(torch.randn(4, d, generator=g), dim=-1)[superpoint]
    return {"coord": grid.float() * 0.05, "grid_coord": grid.int(), "feat": torch.rand(n, 4, generator=g),
            "target": target + 0.3 * torch.randn(n, d, generator=g), "has_target": torch.rand(n, generator=g) > 0.1,
            "superpoint": superpoint, "proposal": torch.where(grid[:, 1] < 10, superpoint, -1),
            "bank_index": torch.arange(n)}


def _fit(model, steps: int, tesd_from: int) -> tuple[float, float]:
    batch = collate_distill([_sample(0)], bank_size=300)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(steps):
        loss = model.training_losses(batch, tesd_from + step)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]


def test_sas_loss_falls():
    torch.manual_seed(0)
    model = SAS(SASConfig(backbone=TINY, text_dim=8, tesd_start=10), torch.eye(8)[:4])
    first, last = _fit(model, 25, tesd_from=0)  # superpoint distillation, then TESD from step 10
    assert last < 0.7 * first


def test_geoguide_loss_falls():
    torch.manual_seed(0)
    model = GeoGuide(GeoGuideConfig(backbone=TINY, text_dim=8, hidden=32), torch.eye(8)[:4]).train()
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    first, last = _fit(model, 25, tesd_from=0)
    assert last < 0.7 * first
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in frozen.items())  # frozen, BN stats too


def test_train_then_evaluate_methods(tmp_path):
    base = {
        "split": "sim_b15n4",
        "data": {"sim_seed_start": 4, "sim_scenes": 1, "val_seed_start": 9, "val_scenes": 1,
                 "heldout_seed_start": 7, "heldout_scenes": 1,
                 "sim_frames": 4, "sim_width": 160, "sim_height": 120, "cache_dir": str(tmp_path / "cache")},
        "windows": {"max_voxels": 3000, "samples_per_scene": 2},
        "trainer": {"max_steps": 3, "batch_size": 1, "log_every": 1, "checkpoint_every": 3, "warmup_steps": 0},
    }
    methods = {"sas": {"type": "SAS", "backbone": TINY, "tesd_start": 2, "teachers": {"capability_images": 1}},
               "geoguide": {"type": "GeoGuide", "hidden": 16, "teachers": {"capability_images": 1}}}
    for name, method in methods.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**base, "method": method, "out_dir": str(tmp_path / name)}))
        assert cli_main(["train", str(path), "--threads", "1", "--no-eval"]) == 0
        ckpt = load_checkpoint(tmp_path / name / "last.safetensors")
        assert ckpt.step == 3 and ckpt.config["method"]["type"] == method["type"]
        assert "sofa" in ckpt.vocabulary  # the prebuilt vocabulary: names only, no labels were used
        segmenter = MapSegmenter.from_checkpoint(tmp_path / name / "last.safetensors")
        assert type(segmenter.model).__name__ == method["type"] and segmenter.feature_dim == 384
        assert cli_main(["evaluate", str(path), str(tmp_path / name / "last.safetensors"), "--validation",
                         "--out", str(tmp_path / f"{name}_eval")]) == 0
        report = json.loads((tmp_path / f"{name}_eval" / "report.json").read_text())
        assert {"base_miou", "novel_miou", "hiou"} <= set(report) and np.sum(report["confusion"]) > 0
    log = (tmp_path / "sas" / "train_log.csv").read_text().splitlines()
    assert log[0].split(",")[3:] == ["loss", "distill_point", "distill_superpoint", "tesd_point", "tesd_superpoint"]


def test_tesd_bank_survives_resume(tmp_path):
    """Three steps, a restart from the checkpoint, three more: the TESD bank (and so the pseudo labels from step 4)
    match an uninterrupted six-step run."""
    from functools import partial

    from ov3dseg_core.training.trainer import Trainer, TrainerConfig

    def run(out, steps, resume):
        torch.manual_seed(0)
        model = SAS(SASConfig(backbone=TINY, text_dim=8, tesd_start=4, alpha=0.5), torch.eye(8)[:4])
        cfg = TrainerConfig(max_steps=steps, batch_size=1, lr=1e-2, warmup_steps=0, min_lr_ratio=1.0,  # constant lr
                            checkpoint_every=100)
        trainer = Trainer(model, [_sample(0)], partial(collate_distill, bank_size=300), cfg, out,
                          checkpoint_config={"method": {"type": "SAS"}}, vocabulary=["a", "b", "c", "d"])
        trainer.fit(resume=resume)
        return model

    straight = run(tmp_path / "straight", 6, resume=False)
    run(tmp_path / "split", 3, resume=False)
    resumed = run(tmp_path / "split", 6, resume=True)
    assert bool(resumed.bank.seen.all()) and torch.equal(resumed.bank.seen, straight.bank.seen)
    assert torch.allclose(resumed.bank.values.float(), straight.bank.values.float(), atol=1e-3)
    for key, value in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[key], value, atol=1e-4), key
