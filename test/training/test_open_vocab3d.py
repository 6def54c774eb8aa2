"""The embedded-default model: it learns the base classes of a scene, and a checkpoint drives a MapSegmenter."""
import numpy as np
import pytest
import torch

from ov3dseg_core.config import to_dict
from ov3dseg_core.eval.splits import load_split
from ov3dseg_core.mapping.voxel_map import VoxelMap, VoxelMapConfig
from ov3dseg_core.models.map_segmenter import MapSegmenter
from ov3dseg_core.models.open_vocab3d import OpenVocab3D, OpenVocab3DConfig
from ov3dseg_core.models.text import apply_template
from ov3dseg_core.training.checkpoint import Checkpoint, export_half, save_checkpoint
from ov3dseg_core.training.config import TrainConfig
from ov3dseg_core.training.map_windows import MapWindowConfig, MapWindowDataset, collate_windows, fuse_training_scene

SPLIT = load_split("sim_b15n4")
SMALL = {"type": "SpUNet14A", "base_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 16, 16]}


@pytest.fixture(scope="module")
def batch(small_scene, minilm):
    ds = MapWindowDataset([fuse_training_scene(small_scene, 0.05)], SPLIT.base, minilm.encode,
                          MapWindowConfig(augment=False, whole_room_prob=1.0, max_voxels=6000))
    return collate_windows([ds[0]])


def _model(minilm, **kw):
    torch.manual_seed(0)
    cfg = OpenVocab3DConfig(backbone=SMALL, mask_warmup_steps=0, **kw)
    return OpenVocab3D(cfg, minilm.encode(apply_template(SPLIT.base)))


def test_overfits_one_sample(batch, minilm):
    model = _model(minilm)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    first = None
    for step in range(250):
        losses = model.training_losses(batch, step)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first if first is not None else {k: float(v.detach()) for k, v in losses.items()}
    with torch.no_grad():
        last = {k: float(v) for k, v in model.training_losses(batch, 250).items()}
    assert last["loss"] < 0.3 * first["loss"]
    assert last["mask"] < first["mask"] and last["view"] < first["view"]
    model.eval()
    labels, _, _ = model.predict(batch, model.base_text)
    valid = batch["label"] >= 0
    assert (labels[valid] == batch["label"][valid]).float().mean() > 0.9


def test_mask_loss_waits_for_warm_up(batch, minilm):
    model = _model(minilm)
    model.cfg.mask_warmup_steps = 10
    with torch.no_grad():
        assert float(model.training_losses(batch, 9)["mask"]) == 0.0
        assert float(model.training_losses(batch, 10)["mask"]) > 0.0


def test_checkpoint_round_trip_through_map_segmenter(tmp_path, batch, minilm):
    model = _model(minilm).eval()
    cfg = TrainConfig(model=model.cfg)
    path = save_checkpoint(tmp_path / "m.safetensors", Checkpoint(model.state_dict(), to_dict(cfg), SPLIT.base))
    half = export_half(path, tmp_path / "m16.safetensors")
    assert half.stat().st_size < 0.6 * path.stat().st_size
    seg = MapSegmenter.from_checkpoint(half)
    assert seg.vocabulary == list(SPLIT.base) and seg.feature_dim == 384

    # two clusters of voxels 4 m apart; a window around the first updates only its voxels
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(0, 0.5, (400, 3)), rng.uniform(4, 4.5, (400, 3))]).astype(np.float32)
    voxel_map = VoxelMap(VoxelMapConfig(voxel_size=0.05, feature_dim=384))
    voxel_map.integrate(pts, colors=np.full((800, 3), 128, np.uint8))
    result = seg.update(voxel_map, center=np.array([0.25, 0.25, 0.25]), radius=1.0)
    weights = voxel_map.feature_weights()
    near = np.linalg.norm(voxel_map.positions() - 0.25, axis=1) < 1.0
    assert result.num_voxels == near.sum() and (weights[near] > 0).all() and (weights[~near] == 0).all()

    feats = voxel_map.features()[near].astype(np.float32)
    labels, scores = seg.classify(feats, ["chair", "sofa"])
    text = seg.embed(["chair", "sofa"]).numpy()
    expected = (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ text.T
    assert np.array_equal(labels, expected.argmax(1)) and np.allclose(scores, expected.max(1), atol=1e-3)


def test_inference_settings_of_the_checkpoint_reach_the_map_segmenter(tmp_path, minilm):
    """query_template wraps names and queries; pool_superpoints gives every voxel of a superpoint (here: one
    grey plane and one red plane meeting at a crease) its superpoint's mean feature, fused into the map."""
    from ov3dseg_core.models.superpoints import SuperpointConfig, voxel_superpoints

    model = _model(minilm, query_template="a {}", pool_superpoints=True,
                   superpoints=SuperpointConfig(k=0.05, min_size=20, max_size=0, color_weight=1.0)).eval()
    path = save_checkpoint(tmp_path / "m.safetensors",
                           Checkpoint(model.state_dict(), to_dict(TrainConfig(model=model.cfg)), SPLIT.base))
    seg = MapSegmenter.from_checkpoint(path)
    assert seg.template == "a {}" and seg.superpoints == model.cfg.superpoints
    assert torch.allclose(seg.embed(["chair"]), torch.nn.functional.normalize(minilm.encode(["a chair"]), dim=-1),
                          atol=1e-5)

    g = np.arange(20)
    floor = np.stack(np.meshgrid(g, g, [0], indexing="ij"), -1).reshape(-1, 3)
    wall = np.stack(np.meshgrid([0], g, g[1:], indexing="ij"), -1).reshape(-1, 3)
    keys = np.concatenate([floor, wall])
    colors = np.r_[np.full((len(floor), 3), 128), np.tile([[200, 30, 30]], (len(wall), 1))].astype(np.uint8)
    voxel_map = VoxelMap(VoxelMapConfig(voxel_size=0.05, feature_dim=384))
    voxel_map.integrate(((keys + 0.5) * 0.05).astype(np.float32), colors=colors)
    seg.update(voxel_map)
    with voxel_map.lock:
        stored, k, p, c = voxel_map.features(), voxel_map.keys(), voxel_map.positions(), voxel_map.colors()
    superpoint = voxel_superpoints(k, p, colors=c, **vars(seg.superpoints))
    assert 2 <= len(np.unique(superpoint)) < 10
    for s in np.unique(superpoint):
        rows = stored[superpoint == s].astype(np.float32)
        assert np.allclose(rows, rows[0], atol=2e-3)
    raw = seg.features(k, p, c).numpy()
    assert not np.allclose(raw, raw[0], atol=2e-3)  # per voxel the network's features differ


def test_region_contrastive_loss_hand_computed():
    from ov3dseg_core.models.heads import TextClassifier
    from ov3dseg_core.models.open_vocab3d import region_contrastive_loss

    classifier = TextClassifier(init_temperature=1.0)  # scale 1: logits are plain cosines
    captions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # regions 0 and 2 share a caption
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    loss = region_contrastive_loss(features, torch.tensor([0, 1, 2]), captions, classifier)
    # three points, each with cosine 1 to its caption and 0 to the other distinct caption
    expected = -torch.log(torch.exp(torch.tensor(1.0)) / (torch.exp(torch.tensor(1.0)) + 1.0))
    assert torch.isclose(loss, expected)
    wrong = region_contrastive_loss(features, torch.tensor([1, 0, 1]), captions, classifier)
    assert float(wrong.detach()) > float(loss.detach()) + 0.5


def test_class_weights_reach_the_segmentation_loss(batch, minilm):
    """Zero weight on every class present in the batch but one: L_seg is that class's CE alone."""
    model = _model(minilm)
    labels = batch["label"]
    keep = int(labels[labels >= 0][0])
    weights = torch.zeros(len(SPLIT.base))
    weights[keep] = 1.0
    weighted = OpenVocab3D(model.cfg, model.base_text, class_weights=weights)
    weighted.load_state_dict(model.state_dict() | {"class_weights": weights})
    seg = weighted.training_losses(batch, 0)["seg"]
    logits = model.classifier(model(batch), model.base_text)
    only = labels == keep
    expected = torch.nn.functional.cross_entropy(logits[only], labels[only])
    assert torch.isclose(seg, expected, atol=1e-5)


def test_binary_loss_scores_novelty_from_the_base_cosines(batch, minilm):
    """s_b is high for a feature far from every base class and low for one on a base class; L_bi is off at
    weight 0 and otherwise the BCE of those logits against is_novel."""
    model = _model(minilm, binary_weight=1.0)
    on_base = model.base_text[:1]
    base = model.base_text.double()
    v = torch.randn(1, base.shape[1], dtype=torch.float64)
    away = v - torch.linalg.lstsq(base.t(), v.t()).solution.t() @ base  # orthogonal to every base class
    away = torch.nn.functional.normalize(away, dim=-1).float()
    assert float((away @ model.base_text.t()).abs().max()) < 1e-4
    assert float(model.novel_logits(on_base)) < 0 < float(model.novel_logits(away))
    assert bool((batch["is_novel"] == 1).any())
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        model.novel_logits(model(batch))[batch["is_novel"] >= 0], batch["is_novel"][batch["is_novel"] >= 0].float())
    assert torch.isclose(model.training_losses(batch, 0)["binary"], expected, atol=1e-5)
    assert float(_model(minilm).training_losses(batch, 0)["binary"].detach()) == 0.0


def test_binary_loss_pushes_not_base_voxels_off_the_base_classes(batch, minilm):
    """Trained with L_bi, the voxels annotated with non-base classes end further from every base class than
    without it (same seed, same steps)."""
    novel = batch["is_novel"] == 1
    scores = {}
    for weight in (0.0, 4.0):
        model = _model(minilm, binary_weight=weight)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
        for step in range(60):
            loss = model.training_losses(batch, step)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores[weight] = float((model(batch)[novel] @ model.base_text.t()).max(-1).values.mean())
    assert scores[4.0] < scores[0.0] - 0.05
