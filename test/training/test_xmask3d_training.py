"""Training the full XMask3D from scenes: view batches (shapes, visibility, no novel labels), the schedule, a short
run lowering the loss, the checkpoint round trip through ``ov3dseg train`` / ``ov3dseg evaluate``, the shipped
configs' train blocks, and the 2D+3D semantic stage writing features for the voxels a key frame sees."""
import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.config import CONFIG_DIR, from_dict, load_yaml
from ov3dseg_core.eval.splits import load_split
from ov3dseg_core.geometry.camera import project_points
from ov3dseg_core.geometry.transforms import invert_transform, transform_points
from ov3dseg_core.models.losses import LossConfig
from ov3dseg_core.models.semantic_stage import KeyFramePolicy, XMask3DStage, load_semantic_stage
from ov3dseg_core.models.xmask3d import build_xmask3d
from ov3dseg_core.training.trainer import warmup_cosine
from ov3dseg_core.training.xmask3d import (SceneViewDataset, ViewDataConfig, collate_views, load_train_config,
                                           load_xmask3d, steps_per_epoch, trainer_config)

VIEWS = ViewDataConfig(image_size=[48, 64], max_points=800, min_object_points=10)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_xmask3d("xmask3d_tiny")
    m.cfg.voxel_size = 0.1  # coarse voxels keep the CPU steps short
    return m


@pytest.fixture(scope="module")
def dataset(small_scene, model):
    return SceneViewDataset([small_scene], model.base_classes, VIEWS, seed=0)


def test_view_samples_are_consistent_and_never_name_novel_classes(small_scene, dataset):
    scene = small_scene
    split = load_split("sim_b15n4")
    novel_ids = [scene.label_names.index(n) for n in split.novel]
    assert len(dataset) == len(scene.frames)
    novel_points = 0
    for index in range(len(dataset)):
        s = dataset[index]
        frame = scene.frames[index]
        p = len(s["points"])
        assert s["image"].shape == (48, 64, 3) and s["label_image"].shape == (48, 64)
        assert 0 < p <= 800 and s["colors"].shape == (p, 3)
        assert s["pixel_index"].shape == s["labels"].shape == s["is_novel"].shape == (p,)
        assert s["pixel_index"].min() >= 0 and s["pixel_index"].max() < 48 * 64  # every point is visible
        # labels are base-class indices; the novel classes only ever appear as "not base" (binary target 1)
        base = len(split.base)
        assert s["labels"].max() < base and s["label_image"].max() < base
        rows = np.flatnonzero(s["is_novel"] == 1)
        assert (s["labels"][rows] == -1).all() and (s["labels"][s["is_novel"] == 0] >= 0).all()
        novel_points += np.isin(frame.labels, novel_ids).sum()
        assert isinstance(s["caption"], str) and s["caption"].startswith(("a ", "an "))
    assert novel_points > 0  # the views show novel objects, which no label names
    # the label image agrees with the point labels at the points' pixels (up to resizing at object borders)
    s = dataset[0]
    agree = s["label_image"].reshape(-1)[s["pixel_index"]] == s["labels"]
    assert agree.mean() > 0.8


def test_points_project_onto_their_pixels(small_scene):
    ds = SceneViewDataset([small_scene], load_split("sim_b15n4").base,
                          ViewDataConfig(image_size=[48, 64], max_points=500, rotate=False, scale_range=[1, 1]))
    s, frame = ds[1], small_scene.frames[1]
    uv, _, valid = project_points(frame.camera.scaled(64 / 160),
                                  transform_points(invert_transform(frame.pose), s["points"]))
    assert valid.all()
    pu, pv = s["pixel_index"] % 64, s["pixel_index"] // 64
    assert np.abs(uv - np.stack([pu, pv], 1)).max() <= 1.0  # the resized image's pixel up to rounding


def test_frames_without_label_images_or_instances(small_scene):
    """Raw ScanNet: no 2D labels (the visible points' labels are drawn into the image), no instances (one caption
    object per class)."""
    frames = [dataclasses.replace(f, labels=None, instances=None) for f in small_scene.frames]
    scene = dataclasses.replace(small_scene, frames=frames, instances=None)
    ds = SceneViewDataset([scene], load_split("sim_b15n4").base, VIEWS)
    s, reference = ds[0], SceneViewDataset([small_scene], load_split("sim_b15n4").base, VIEWS)[0]
    drawn = s["label_image"] >= 0
    assert drawn.mean() > 0.5 and (s["label_image"][drawn] == reference["label_image"][drawn]).mean() > 0.9
    assert (s["labels"] >= 0).mean() > 0.5 and s["caption"]


def test_collate_gives_the_trainer_a_view_batch(dataset, model):
    batch = collate_views([dataset[0], dataset[1]], model.cfg.voxel_size)
    assert batch["batch_size"] == 2 and len(batch["captions"]) == 2
    assert batch["image"].shape == (2, 3, 48, 64) and batch["label_image"].shape == (2, 48, 64)
    assert batch["point_offset"][-1] == len(batch["labels"]) == len(batch["pixel_index"])
    assert batch["offset"][-1] == len(batch["grid_coord"]) == len(batch["feat"])
    assert "caption" not in batch  # embedded by the model's own text encoder in training_losses


def test_schedule_epochs_to_steps_and_cosine():
    assert steps_per_epoch(64, 4) == 16 and steps_per_epoch(65, 4) == 17
    assert steps_per_epoch(64, 64, world_size=4) == 1  # the batch is global: 16 views per rank
    schedule = load_train_config("xmask3d_scannet").train
    cfg = trainer_config(schedule, max_steps=100, world_size=4)
    assert (cfg.batch_size, cfg.max_steps, cfg.min_lr_ratio) == (16, 100, 0.0)
    assert [warmup_cosine(s, cfg) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0])  # cosine to 0


def test_short_run_lowers_the_loss_and_switches_mask_loss_on_by_epoch(dataset, model):
    batch = collate_views([dataset[0], dataset[2]], model.cfg.voxel_size)
    model.train()
    loss_cfg, inference_cfg = model.cfg.loss, model.cfg.inference
    model.steps_per_epoch = 4
    model.cfg.loss = dataclasses.replace(loss_cfg, mask_loss_start=2, min_mask_points=1)  # L_mask from step 8
    model.cfg.inference = dataclasses.replace(inference_cfg, mask_threshold=0.0)  # every point joins a mask
    optimizer = torch.optim.AdamW(model.param_groups(3e-3, 1e-3))
    losses = []
    for step in range(12):
        terms = model.training_losses(batch, step)
        assert (float(terms["mask"].detach()) > 0) == (step >= 8)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append({k: float(v.detach()) for k, v in terms.items()})
    assert {"seg_3d", "seg_fuse", "m2f_class", "m2f_focal", "view_3d", "view_fuse", "binary"} <= set(losses[0])
    pre_mask = [sum(v for k, v in row.items() if k not in ("loss", "mask")) for row in losses]
    assert np.mean(pre_mask[-3:]) < 0.8 * np.mean(pre_mask[:3])
    model.steps_per_epoch, model.cfg.loss, model.cfg.inference = 1, loss_cfg, inference_cfg


def _tiny_config(tmp_path) -> str:
    cfg = load_yaml("xmask3d_tiny")
    cfg["model"]["voxel_size"] = 0.1
    cfg["data"] = {"sim_seed_start": 4, "sim_scenes": 1, "val_seed_start": 9, "val_scenes": 1,
                   "heldout_seed_start": 7, "heldout_scenes": 1, "sim_frames": 3, "sim_width": 160,
                   "sim_height": 120, "cache_dir": str(tmp_path / "cache")}
    cfg["views"] = {"image_size": [48, 64], "max_points": 600}
    cfg["train"] = {"epochs": 2, "batch_size": 2, "lr_3d": 0.003, "lr_other": 0.001, "log_every": 1}
    cfg["out_dir"] = str(tmp_path / "run")
    path = tmp_path / "xmask3d.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_train_and_evaluate_commands_round_trip(tmp_path):
    config = _tiny_config(tmp_path)
    assert cli_main(["train", config, "--threads", "1", "--no-eval"]) == 0
    ckpt = tmp_path / "run" / "last.safetensors"
    model = load_xmask3d(ckpt)
    assert model.steps_per_epoch == 1 and not model.training
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 4  # 3 views, batch 2: 2 steps an epoch, 2 epochs
    again = load_xmask3d(ckpt)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(model.embed_classes(["sofa"]), again.embed_classes(["sofa"]))  # one text space
    out = tmp_path / "eval"
    assert cli_main(["evaluate", config, str(ckpt), "--validation", "--out", str(out), "--mode", "3d",
                     "--mode", "ensemble"]) == 0
    for mode in ("3d", "ensemble"):
        report = json.loads((out / mode / "report.json").read_text())
        assert report["split"] == "sim_b15n4" and report["num_points"] > 0
        assert {"base_miou", "novel_miou", "hiou"} <= set(report)
    assert load_semantic_stage(ckpt).kind == "2d+3d"


def test_shipped_configs_parse_and_keep_eq8_weights():
    for path in sorted(CONFIG_DIR.glob("xmask3d_*.yaml")):
        cfg = load_train_config(path.stem)
        assert cfg.train.scheduler == "cosine" and cfg.train.epochs > 0, path.stem
        loss = from_dict(LossConfig, cfg.model["loss"])
        assert loss.seg == 4.0 and loss.m2f_focal > 0, path.stem
        assert len(cfg.views.image_size) == 2
    real = load_train_config("xmask3d_scannet")
    assert (real.train.epochs, real.train.batch_size, real.model["loss"]["mask_loss_start"]) == (150, 64, 50)


def test_real_size_schedule_and_views_with_a_tiny_model(small_scene):
    """xmask3d_scannet's train/views/loss blocks on the tiny network: the same dataset, collate and loss path."""
    real = load_train_config("xmask3d_scannet")
    tiny = load_yaml("xmask3d_tiny")["model"]
    torch.manual_seed(0)
    model = build_xmask3d({**tiny, "split": real.model["split"], "voxel_size": 0.1,
                           "loss": {**real.model["loss"], "num_points": 64}})
    views = ViewDataConfig(**{**vars(real.views), "image_size": [60, 80], "max_points": 400})
    ds = SceneViewDataset([small_scene], model.base_classes, views)
    terms = model.training_losses(collate_views([ds[0]], model.cfg.voxel_size), step=0)
    assert torch.isfinite(terms["loss"]) and float(terms["mask"]) == 0.0  # L_mask waits for epoch 50


def test_keyframe_policy():
    policy = KeyFramePolicy(min_translation_m=0.5, min_rotation_deg=30, max_interval_s=5)
    pose = np.eye(4)
    assert policy.is_key_frame(pose, 0, None, None)
    moved = pose.copy()
    moved[0, 3] = 0.6
    assert policy.is_key_frame(moved, 1, pose, 0) and not policy.is_key_frame(pose, 1, pose, 0)
    c, s = np.cos(np.radians(40)), np.sin(np.radians(40))
    turned = pose.copy()
    turned[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    assert policy.is_key_frame(turned, 1, pose, 0)
    assert policy.is_key_frame(pose, int(6e9), pose, 0)  # by time


def test_2d3d_stage_writes_features_for_window_voxels_a_key_frame_sees(small_scene, model):
    from ov3dseg_core.training.evaluation import fuse_scene

    voxel_map = fuse_scene(small_scene, 0.1, model.cfg.feature_dim)
    inference_cfg = model.cfg.inference  # a barely trained model: every seen voxel joins its best mask
    model.cfg.inference = dataclasses.replace(inference_cfg, mask_threshold=0.0)
    stage = XMask3DStage(model, KeyFramePolicy(max_pending=1), image_size=[48, 64])
    frame = small_scene.frames[2]
    assert stage.offer_frame(frame) and not stage.offer_frame(frame)  # same pose and time: not a key frame
    with voxel_map.lock:
        positions = voxel_map.positions()
    centre, radius = frame.pose[:3, 3], 2.5
    in_window = np.linalg.norm(positions - centre, axis=1) <= radius
    result = stage.update(voxel_map, center=centre, radius=radius)
    assert result.passes == {"2d": 1, "3d": 1} and result.num_voxels == in_window.sum()
    with voxel_map.lock:
        written = voxel_map.feature_weights() > 0
        feats = voxel_map.features()
    assert np.array_equal(written, in_window)
    assert np.allclose(np.linalg.norm(feats[written], axis=1), 1, atol=1e-2)
    # the 2D branch reached the voxels the key frame sees (F_fuse != F3d there), not the others
    f3d = torch.nn.functional.normalize(model.point_features_3d(positions[in_window],
                                                                voxel_map.colors()[in_window]), dim=-1)
    seen = stage._pixels(positions[in_window], frame) >= 0
    diff = (torch.from_numpy(feats[in_window].astype(np.float32)) - f3d).norm(dim=1).numpy()
    assert seen.any() and (~seen).any()
    assert np.all(diff[~seen] < 1e-2) and np.median(diff[seen]) > 1e-2
    labels, scores = stage.classify(feats[written], ["sofa", "wall"])
    assert labels.shape == scores.shape == (written.sum(),)
    assert stage.update(voxel_map, centre, radius).passes == {"2d": 0, "3d": 1}  # no key frame pending
    model.cfg.inference = inference_cfg


def test_default_model_is_the_3d_kind():
    stage = load_semantic_stage("default")
    assert stage.kind == "3d" and not stage.offer_frame(None)
