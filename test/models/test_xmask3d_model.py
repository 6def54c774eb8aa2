"""The assembled XMask3D at toy size: gradients reach exactly the trainable parts, the model overfits a few synthetic
views (coloured boxes rendered by projecting points), and ``predict`` labels frames and scenes in every mode."""
import numpy as np
import pytest
import torch

from ov3dseg_core.config import load_yaml
from ov3dseg_core.data.frames import RGBDFrame, Scene
from ov3dseg_core.geometry.camera import PinholeCamera, project_points
from ov3dseg_core.geometry.transforms import invert_transform, transform_points
from ov3dseg_core.models.xmask3d import build_xmask3d, make_view_batch, open_clip_model
from ov3dseg_core.registry import REGISTRY

# name, class colour, box (min, max) in metres
OBJECTS = [
    ("floor", (60, 140, 60), (-2.0, -2.0, -0.05), (2.0, 2.0, 0.0)),
    ("wall", (200, 200, 210), (-2.0, 2.0, 0.0), (2.0, 2.05, 2.0)),
    ("table", (150, 90, 40), (-0.6, 0.2, 0.0), (0.4, 0.9, 0.75)),
    ("chair", (40, 60, 200), (0.7, -0.3, 0.0), (1.2, 0.2, 0.9)),
    ("sofa", (200, 40, 40), (-1.8, -1.0, 0.0), (-0.9, 0.4, 0.8)),  # a novel class of sim_b15n4
]
IMAGE = 64
CAMERA = PinholeCamera(width=IMAGE, height=IMAGE, fx=40.0, fy=40.0, cx=31.5, cy=31.5)


def _box_surface(lo, hi, spacing, rng):
    lo, hi = np.array(lo), np.array(hi)
    n = max(int(np.prod((hi - lo)[(hi - lo) > 0.06]) / spacing ** 2 * 2), 200)
    pts = lo + rng.random((n * 3, 3)) * (hi - lo)
    axis = rng.integers(0, 3, len(pts))
    pts[np.arange(len(pts)), axis] = np.where(rng.random(len(pts)) < 0.5, lo[axis], hi[axis])
    return pts


def _scene(rng):
    pts, cols, labels = [], [], []
    for i, (_, colour, lo, hi) in enumerate(OBJECTS):
        p = _box_surface(lo, hi, 0.04, rng)
        pts.append(p)
        cols.append(np.clip(np.array(colour) + rng.normal(0, 8, (len(p), 3)), 0, 255))
        labels.append(np.full(len(p), i))
    return (np.concatenate(pts).astype(np.float32), np.concatenate(cols).astype(np.uint8),
            np.concatenate(labels))


def _look_at(eye, target):
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)  # optical frame: x right, y down, z forward
    T[:3, 3] = eye
    return T


def _render(points, colors, labels, T_world_camera):
    """Z-buffer the points into colour / label / depth images; returns them and the winning points' indices."""
    uv, z, valid = project_points(CAMERA, transform_points(invert_transform(T_world_camera), points))
    idx = np.flatnonzero(valid)
    pix = (np.rint(uv[idx, 1]).astype(int) * IMAGE + np.rint(uv[idx, 0]).astype(int))
    order = np.lexsort((z[idx], pix))
    pix, idx = pix[order], idx[order]
    first = np.r_[True, pix[1:] != pix[:-1]]
    pix, idx = pix[first], idx[first]
    color = np.zeros((IMAGE * IMAGE, 3), np.uint8)
    label = np.full(IMAGE * IMAGE, -1, np.int64)
    depth = np.zeros(IMAGE * IMAGE, np.float32)
    color[pix], label[pix], depth[pix] = colors[idx], labels[idx], z[idx]
    return color.reshape(IMAGE, IMAGE, 3), label.reshape(IMAGE, IMAGE), depth.reshape(IMAGE, IMAGE), idx, pix


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    points, colors, labels = _scene(rng)
    poses = [_look_at(np.array([3.2 * np.cos(a), 3.2 * np.sin(a) - 0.5, 1.8]), [0.0, 0.3, 0.4])
             for a in np.radians([-120, -90, -60, -30])]
    views = [_render(points, colors, labels, T) for T in poses]
    return points, colors, labels, poses, views


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_xmask3d("xmask3d_tiny")


def _batch(model, world, which):
    points, colors, labels, _, views = world
    names = [o[0] for o in OBJECTS]
    base_index = np.array([model.base_classes.index(n) if n in model.base_classes else -1 for n in names])
    novel = np.array([0 if n in model.base_classes else 1 for n in names])
    imgs, pts, cols, pixs, labs, nov, label_imgs = [], [], [], [], [], [], []
    for v in which:
        color, label, _, idx, pix = views[v]
        imgs.append(color)
        pts.append(points[idx])
        cols.append(colors[idx])
        pixs.append(pix)
        labs.append(base_index[labels[idx]])
        nov.append(novel[labels[idx]])
        label_imgs.append(np.where(label >= 0, base_index[np.maximum(label, 0)], -1))
    captions = model.embed_captions(["a room with a table, a chair and a sofa"] * len(which))
    return make_view_batch(imgs, pts, cols, pixs, model.cfg.voxel_size, labs, nov, label_imgs, captions)


def test_make_view_batch_voxelises_each_view():
    img = np.zeros((4, 4, 3), np.uint8)
    pts = [np.array([[0.01, 0, 0], [0.02, 0, 0], [0.5, 0, 0]], np.float32), np.array([[1.0, 1.0, 1.0]], np.float32)]
    cols = [np.array([[255, 0, 0], [0, 0, 0], [255, 255, 255]], np.uint8), np.zeros((1, 3), np.uint8)]
    b = make_view_batch([img, img], pts, cols, [np.array([0, 1, -1]), np.array([5])], voxel_size=0.1)
    assert b.offset.tolist() == [2, 3] and b.point_offset.tolist() == [3, 4]
    assert b.point_voxel.tolist() == [0, 0, 1, 2]
    assert b.grid_coord.tolist() == [[0, 0, 0], [5, 0, 0], [0, 0, 0]]  # per view, shifted to start at 0
    assert b.feat.tolist() == [[0.0, -1.0, -1.0], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]  # mean colour in [-1, 1]
    assert b.image.shape == (2, 3, 4, 4) and b.pixel_index.tolist() == [0, 1, -1, 5]
    assert [(s.start, s.stop) for s in b.point_slices()] == [(0, 3), (3, 4)]
    with pytest.raises(ValueError, match="one entry per view"):
        make_view_batch([img], pts, cols, [np.array([0, 1, -1])], voxel_size=0.1)


def test_registry_build_and_config_errors():
    assert "XMask3D" in REGISTRY.names("model")
    with pytest.raises(ValueError, match="mode"):
        build_xmask3d({"type": "XMask3D", "split": "sim_b15n4", "inference": {"mode": "4d"}})
    with pytest.raises(ValueError, match="XMask3D config"):
        build_xmask3d({"type": "SAS"})


def test_gradients_reach_trainable_parts_only(model, world):
    batch = _batch(model, world, [0, 1])
    with torch.no_grad():
        model.captioner.alpha.fill_(0.3)  # open ODISE's zero-initialised gate so every captioner weight is used
        model.captioner.alpha_time.fill_(0.3)
    model.zero_grad(set_to_none=True)
    model.train()
    out = model(batch)
    model.cfg.loss.min_mask_points = 1
    total, terms = model.loss(batch, out, progress=model.cfg.loss.mask_loss_start)
    assert {"seg_3d", "seg_fuse", "m2f_class", "m2f_mask", "m2f_dice", "view_3d", "view_2d", "view_fuse", "mask",
            "binary"} <= set(terms)
    assert float(terms["mask"].detach()) > 0
    total.backward()
    frozen = {"unet": model.diffusion.unet, "vae": model.diffusion.vae, "clip": open_clip_model(model.text_encoder)}
    for name, module in frozen.items():  # the CLIP model holds MaskCLIP's image tower and the text tower
        assert all(p.grad is None for p in module.parameters()), name
    trainable = {"backbone": model.backbone, "binary_head": model.binary_head, "captioner": model.captioner,
                 "projection": model.projection, "pixel_decoder": model.pixel_decoder,
                 "mask_decoder": model.mask_decoder, "fusion": model.fusion, "proj_3d": model.proj_3d,
                 "classifier": model.classifier}
    for name, module in trainable.items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    assert model.null_embed.grad is not None and model.null_embed.grad.abs().sum() > 0
    # the geometry-aware condition (Eq. 4): the 2D losses alone reach the 3D encoder through the captioner
    model.zero_grad(set_to_none=True)
    out = model(batch)
    _, terms = model.loss(batch, out, progress=0.0)
    (terms["m2f_mask"] + terms["m2f_dice"]).backward()
    assert model.backbone.conv_input[0].weight.grad.abs().sum() > 0
    assert "mask" not in model.loss(batch, model(batch), progress=0.0)[1]  # L_mask waits for its warm-up
    model.cfg.loss.min_mask_points = 10


def test_2d_condition_variant_eq3(world):
    """captioner.condition "2d": the UNet condition comes from the frozen CLIP image embedding (ODISE, Eq. 3), so the
    2D losses no longer reach the 3D encoder."""
    torch.manual_seed(0)
    model = build_xmask3d({**load_yaml("xmask3d_tiny")["model"], "captioner": {"condition": "2d", "latent_dim": 32}})
    assert model.captioner.adapter.in_features == model.cfg.feature_dim
    batch = _batch(model, world, [0])
    out = model(batch)
    _, terms = model.loss(batch, out)
    (terms["m2f_mask"] + terms["m2f_dice"]).backward()
    assert model.backbone.conv_input[0].weight.grad is None
    assert model.captioner.alpha.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def trained(world):
    """The tiny model after 120 AdamW steps on two batches of two synthetic views; (model, losses, batches)."""
    torch.manual_seed(0)
    model = build_xmask3d("xmask3d_tiny")
    model.cfg.voxel_size = 0.15  # coarse voxels keep the CPU run short
    model.cfg.loss.mask_loss_start = 60  # "epochs" are steps here: L_mask joins halfway
    for m in model.modules():  # Pointcept's BN momentum 0.01 needs far more steps for its running statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = 0.1
    model.train()
    batches = [_batch(model, world, [0, 1]), _batch(model, world, [2, 3])]
    opt = torch.optim.AdamW(model.param_groups(lr_3d=1e-2, lr_other=3e-3))
    losses, has_mask_term = [], []
    for step in range(120):
        batch = batches[step % 2]
        total, terms = model.loss(batch, model(batch), progress=step)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
        has_mask_term.append("mask" in terms)
    assert has_mask_term == [step >= 60 for step in range(120)]
    return model, losses, batches


def test_tiny_model_overfits_synthetic_views(trained):
    model, losses, batches = trained
    start, end = np.mean(losses[:6]), np.mean(losses[-6:])
    assert end < 0.3 * start, (start, end)
    model.eval()
    with torch.no_grad():
        for batch in batches:
            out = model(batch)
            base_text = model.embed_classes(model.base_classes)
            valid = batch.labels >= 0
            for feats in (out.f3d, out.f_fuse):
                pred = model.classifier(feats, base_text).argmax(-1)
                assert float((pred[valid] == batch.labels[valid]).float().mean()) > 0.9
            novel_ok = (out.novel_logits > 0).long() == batch.is_novel
            assert float(novel_ok.float().mean()) > 0.9
            assert float(out.has_2d.float().mean()) > 0.5  # the 2D masks cover most points


def test_predict_frames_and_scenes_in_every_mode(trained, world):
    model = trained[0]
    model.train()
    points, colors, labels, poses, views = world
    frames = [RGBDFrame(color=v[0], depth=v[2], camera=CAMERA, pose=T) for v, T in zip(views, poses)]
    names = [o[0] for o in OBJECTS]
    scene = Scene(name="boxes", frames=frames, label_names=names, points=points, colors=colors,
                  labels=labels.astype(np.int32))
    vocabulary = ["floor", "wall", "table", "chair", "sofa"]
    base = np.isin(labels, [i for i, n in enumerate(vocabulary) if n in model.base_classes])
    for mode in ("3d", "2d", "fused", "ensemble"):
        pred = model.predict(scene, vocabulary, mode=mode)
        assert pred.labels.shape == (len(points),) and pred.features.shape == (len(points), 32)
        assert np.all((pred.scores > 0) & (pred.scores <= 1))
        assert np.allclose(np.linalg.norm(pred.features, axis=1), 1, atol=1e-4)
        if mode in ("3d", "fused"):
            assert (pred.labels[base] == labels[base]).mean() > 0.8, mode
    frame_pred = model.predict(frames[0], vocabulary, mode="fused", pixel_stride=2)
    assert frame_pred.points.shape == (len(frame_pred.labels), 3)
    assert model.training  # predict restores the mode it found
    with pytest.raises(ValueError, match="mode"):
        model.predict(frames[0], vocabulary, mode="4d")
    with pytest.raises(TypeError, match="RGBDFrame or a Scene"):
        model.predict(points, vocabulary)
