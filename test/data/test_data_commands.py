"""fuse-sample, record-sample and dataset-to-bag, run through the real CLI on written fixtures and shared data."""
import json

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from ov3dseg_core import cli
from ov3dseg_core.data import RGBDFrame, Scene, write_dataset_folder
from ov3dseg_core.data.bag_writer import MIN_START_NS
from ov3dseg_core.data.image_files import write_color, write_u16
from ov3dseg_core.data.ply import read_ply_vertices
from ov3dseg_core.data.samples import ENV_VAR, SHARED_LIVING_ROOM, find_living_room
from ov3dseg_core.geometry.camera import PinholeCamera
from ov3dseg_core.geometry.transforms import make_transform
from ov3dseg_core.msgs.image import image_to_numpy


def _write_redwood(folder, n=2):
    """A wall 2 m in front of a 32x24 camera that slides 10 cm sideways per frame."""
    for sub in ("color", "depth"):
        (folder / sub).mkdir(parents=True)
    lines = []
    for i in range(n):
        write_color(folder / "color" / f"{i:05d}.jpg", np.full((24, 32, 3), 200, np.uint8))
        write_u16(folder / "depth" / f"{i:05d}.png", np.full((24, 32), 2000, np.uint16))
        lines += [f"{i} {i} {i + 1}", f"1 0 0 {0.1 * i}", "0 1 0 0", "0 0 1 0", "0 0 0 1"]
    (folder / "trajectory.log").write_text("\n".join(lines) + "\n")
    (folder / "camera_primesense.json").write_text(json.dumps(
        {"width": 32, "height": 24, "intrinsic_matrix": [20, 0, 0, 0, 20, 0, 15.5, 11.5, 1]}))
    return folder


def _bag(path):
    with AnyReader([path]) as reader:
        out = {}
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
        return out


def test_fuse_sample_on_fixture(tmp_path, capsys):
    folder = _write_redwood(tmp_path / "sample")
    out = tmp_path / "map.ply"
    assert cli.main(["fuse-sample", "--from", str(folder), "--out", str(out), "--voxel-size", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "2 posed frames" in text and str(out) in text
    assert "median error 0.00 cm, 100.0 % within 5 cm" in text  # a flat wall seen from two exact poses
    v = read_ply_vertices(out)
    z = np.asarray(v["z"])
    assert np.all(np.abs(z - 2.0) < 0.1)  # every voxel on the wall
    # the wall spans x in [-1.55, 1.55] m (frame 0) plus 0.1 m of motion: about 33 x 25 voxels of 10 cm
    assert 700 < len(v) < 1000


def test_sample_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    assert cli.main(["fuse-sample", "--from", str(tmp_path / "none")]) == 1
    assert "lacks color, depth, trajectory.log" in capsys.readouterr().err
    monkeypatch.setenv(ENV_VAR, str(_write_redwood(tmp_path / "env")))
    assert find_living_room() == tmp_path / "env"


def test_record_sample_bag(tmp_path, capsys):
    source = SHARED_LIVING_ROOM if (SHARED_LIVING_ROOM / "trajectory.log").exists() else None
    if source is None:
        source = _write_redwood(tmp_path / "sample", n=3)
    out = tmp_path / "sample_bag"
    assert cli.main(["record-sample", "--from", str(source), "--out", str(out), "--rate", "5"]) == 0
    msgs = _bag(out)
    n = len(msgs["/camera/color/image_raw"])
    assert n in (3, 5) and len(msgs["/camera/depth/image_raw"]) == n and len(msgs["/tf"]) == n
    assert [t for t, _ in msgs["/camera/depth/image_raw"]] == [MIN_START_NS + i * 200_000_000 for i in range(n)]
    static = {(t.header.frame_id, t.child_frame_id) for t in msgs["/tf_static"][0][1].transforms}
    assert static == {("map", "odom"), ("base_link", "camera_link"), ("camera_link", "camera_color_optical_frame")}
    assert msgs["/tf"][0][1].transforms[0].child_frame_id == "base_link"
    assert cli.main(["record-sample", "--from", str(source), "--out", str(out)]) == 1  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err


def test_dataset_to_bag_with_labels(tmp_path, capsys):
    cam = PinholeCamera(8, 6, 10.0, 10.0, 3.5, 2.5)
    frames = [RGBDFrame(color=np.full((6, 8, 3), 9, np.uint8), depth=np.full((6, 8), 1.5, np.float32), camera=cam,
                        pose=make_transform([0.1 * i, 0, 0], [0, 0, 0, 1]), stamp_ns=5_000_000_000 + i * 10**8,
                        labels=np.full((6, 8), i % 2, np.int32)) for i in range(5)]
    scene = Scene("gen", frames, ["wall", "floor"], points=np.zeros((4, 3), np.float32),
                  labels=np.array([0, 1, 1, -1], np.int32))
    folder = write_dataset_folder(scene, tmp_path / "ds", progress=False)
    out = tmp_path / "ds_bag"
    assert cli.main(["dataset-to-bag", str(folder), "--out", str(out), "--stride", "2", "--max-frames", "2"]) == 0
    assert "dataset_folder scene gen: wrote 2 frames" in capsys.readouterr().out
    msgs = _bag(out)
    gt = msgs["/ground_truth/semantic/image_raw"]
    assert [t for t, _ in gt] == [5_000_000_000, 5_200_000_000]  # frames 0 and 2, source stamps kept
    assert [int(image_to_numpy(m)[0, 0]) for _, m in gt] == [0, 0]
    assert json.loads(msgs["/ground_truth/label_names"][0][1].data) == ["wall", "floor"]
    assert msgs["/ground_truth/points"][0][1].width == 4
    assert cli.main(["dataset-to-bag", str(tmp_path / "missing"), "--out", str(tmp_path / "b2")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_fuse_sample_on_shared_living_room(tmp_path, capsys):
    if not (SHARED_LIVING_ROOM / "trajectory.log").exists():
        pytest.skip(f"shared sample data absent: {SHARED_LIVING_ROOM}")
    out = tmp_path / "living.ply"
    assert cli.main(["fuse-sample", "--from", str(SHARED_LIVING_ROOM), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "5 posed frames" in text and "into frame 4" in text
    v = read_ply_vertices(out)
    assert 1000 < len(v) < 20000  # a room corner at 5 cm


def test_find_living_room_reports_every_source_tried(tmp_path, monkeypatch):
    o3d = pytest.importorskip("open3d")
    from ov3dseg_core.data import samples

    def offline():
        raise RuntimeError("\x1b[1;31m[Open3D Error] Downloading failed from available mirrors.\n\x1b[0;m")

    monkeypatch.setattr(samples, "SHARED_LIVING_ROOM", tmp_path / "shared" / "living_room")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "empty"))
    monkeypatch.setattr(o3d.data, "SampleRedwoodRGBDImages", offline)
    with pytest.raises(FileNotFoundError) as info:
        find_living_room()
    message = str(info.value)
    assert f"${ENV_VAR} {tmp_path / 'empty'}" in message and str(tmp_path / "shared" / "living_room") in message
    assert "Downloading failed from available mirrors" in message and "\x1b" not in message
    assert "--from DIR" in message
