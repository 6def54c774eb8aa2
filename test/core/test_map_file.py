"""Map files: exact save/load round trips, rejection of truncated, corrupted and incompatible files, atomic saves
that survive a failure mid-write, and PLY export read back with Open3D."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file as save_numpy

from ov3dseg_core import atomic_write
from ov3dseg_core.mapping import MapFileError, VoxelMap, VoxelMapConfig, load_map
from ov3dseg_core.mapping import map_file
from ov3dseg_core.mapping.map_file import PLY_DTYPE

LABELS = ["wall", "floor", "chair"]


def sample_map(seed: int = 0, n: int = 2000) -> VoxelMap:
    rng = np.random.default_rng(seed)
    vmap = VoxelMap(VoxelMapConfig(voxel_size=0.05, num_labels=3, feature_dim=8), label_names=LABELS)
    vmap.integrate(rng.uniform(-1, 1, (n, 3)).astype(np.float32), rng.integers(0, 256, (n, 3), dtype=np.uint8),
                   rng.integers(-1, 3, n), rng.standard_normal((n, 8)).astype(np.float32),
                   weights=rng.uniform(0.5, 2, n).astype(np.float32), sensor_origin=[0, 0, 0])
    vmap.integrate(rng.uniform(-1, 1, (n, 3)).astype(np.float32))
    return vmap


def assert_same_map(a: VoxelMap, b: VoxelMap) -> None:
    assert len(a) == len(b) and a.label_names == b.label_names and a.voxel_size == b.voxel_size
    for accessor in ("keys", "positions", "colors", "weights", "label_distribution", "features", "feature_weights"):
        np.testing.assert_array_equal(getattr(a, accessor)(), getattr(b, accessor)(), err_msg=accessor)
    for got, want in zip(a.labels(), b.labels()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(a.feature_similarity(np.arange(8.0)), b.feature_similarity(np.arange(8.0)))
    for name in ("stamp", "color", "color_weight"):
        np.testing.assert_array_equal(a.state()[name].numpy(), b.state()[name].numpy(), err_msg=name)


def rewrite(path, **metadata_changes) -> None:
    """Rewrite a saved map with changed metadata (and a still-valid checksum)."""
    arrays = load_file(path)
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    save_numpy(arrays, path, metadata={**header["__metadata__"], **metadata_changes})


def test_round_trip_is_exact_and_integration_continues_identically(tmp_path):
    vmap = sample_map()
    path = tmp_path / "map.safetensors"
    vmap.save(path)
    loaded = VoxelMap.load(path)
    assert_same_map(vmap, loaded)
    arrays = load_file(path)  # the reference safetensors reader sees the same arrays
    np.testing.assert_array_equal(arrays["feature"], vmap.features())
    np.testing.assert_array_equal(arrays["keys"], vmap.keys())
    more = np.random.default_rng(5).uniform(-1.5, 1.5, (3000, 3)).astype(np.float32)
    assert vmap.integrate(more) == loaded.integrate(more)
    assert_same_map(vmap, loaded)


def test_empty_map_round_trip(tmp_path):
    path = tmp_path / "empty.safetensors"
    VoxelMap(VoxelMapConfig(voxel_size=0.1, feature_dim=4)).save(path)
    loaded = VoxelMap.load(path)
    assert len(loaded) == 0 and loaded.voxel_size == 0.1 and loaded.features().shape == (0, 4)


def test_load_uses_given_runtime_config_and_rejects_incompatible(tmp_path):
    path = tmp_path / "map.safetensors"
    sample_map().save(path)
    loaded = load_map(path, config=VoxelMapConfig(voxel_size=0.05, num_labels=3, feature_dim=8, max_voxels=123456))
    assert loaded.config.max_voxels == 123456
    with pytest.raises(MapFileError, match="voxel_size"):
        load_map(path, config=VoxelMapConfig(voxel_size=0.1, num_labels=3, feature_dim=8))
    with pytest.raises(MapFileError, match="feature_dim"):
        load_map(path, config=VoxelMapConfig(voxel_size=0.05, num_labels=3, feature_dim=16))


def test_truncated_file_is_rejected(tmp_path):
    path = tmp_path / "map.safetensors"
    sample_map().save(path)
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 20, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(MapFileError, match="map.safetensors"):
            VoxelMap.load(path)


def test_bit_flip_in_payload_is_rejected(tmp_path):
    path = tmp_path / "map.safetensors"
    sample_map().save(path)
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(MapFileError, match="checksum"):
        VoxelMap.load(path)


@pytest.mark.parametrize("changes, message", [
    (dict(format="someone.else"), "not an ov3dseg map"),
    (dict(version="3"), "version"),
    (dict(num_voxels="5"), r"array 'keys' is I32 \(\d+, 3\), expected I32 \(5, 3\)"),
    (dict(voxel_size="abc"), "bad or missing metadata"),
])
def test_wrong_format_version_or_metadata_is_rejected(tmp_path, changes, message):
    path = tmp_path / "map.safetensors"
    sample_map().save(path)
    rewrite(path, **changes)
    with pytest.raises(MapFileError, match=message):
        VoxelMap.load(path)


def test_not_a_map_file(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(MapFileError):
        VoxelMap.load(garbage)
    other = tmp_path / "other.safetensors"
    save_numpy({"x": np.zeros(3, np.float32)}, other)
    with pytest.raises(MapFileError, match="not an ov3dseg map"):
        VoxelMap.load(other)
    with pytest.raises(FileNotFoundError):
        VoxelMap.load(tmp_path / "missing.safetensors")


def test_failed_rename_keeps_previous_map(tmp_path, monkeypatch):
    path = tmp_path / "map.safetensors"
    old = sample_map(seed=0)
    old.save(path)

    def crash(*args, **kwargs):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(atomic_write.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        sample_map(seed=1).save(path)
    monkeypatch.undo()
    assert_same_map(old, VoxelMap.load(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.safetensors"]  # no temp file left behind


def test_crash_while_serialising_keeps_previous_map(tmp_path, monkeypatch):
    path = tmp_path / "map.safetensors"
    old = sample_map(seed=0)
    old.save(path)
    real_write = map_file.write_safetensors

    def write_half_then_crash(filename, arrays, metadata):
        real_write(filename, arrays, metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise MemoryError("simulated crash mid-write")

    monkeypatch.setattr(map_file, "write_safetensors", write_half_then_crash)
    with pytest.raises(MemoryError):
        sample_map(seed=1).save(path)
    monkeypatch.undo()
    assert_same_map(old, VoxelMap.load(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.safetensors"]


def test_ply_export_read_by_open3d(tmp_path):
    o3d = pytest.importorskip("open3d")
    vmap = sample_map()
    path = tmp_path / "map.ply"
    vmap.export_ply(path)
    cloud = o3d.io.read_point_cloud(str(path))
    assert len(cloud.points) == len(vmap)
    np.testing.assert_allclose(np.asarray(cloud.points), vmap.positions(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(cloud.colors) * 255, vmap.colors(), atol=1e-3)
    data = path.read_bytes()
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    assert b"format binary_little_endian 1.0" in data[:header_end]
    vertices = np.frombuffer(data[header_end:], dtype=PLY_DTYPE)
    labels, confidence = vmap.labels()
    np.testing.assert_array_equal(vertices["label"], labels)
    np.testing.assert_array_equal(vertices["score"], confidence)


def rewrite_arrays(path, arrays: dict, **metadata_changes) -> None:
    """Rewrite a saved map with other arrays (torch tensors) and metadata, the checksum recomputed when it can be."""
    import torch
    from safetensors.torch import save_file
    with open(path, "rb") as f:
        meta = {**json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"], **metadata_changes}
    try:
        meta["checksum"] = map_file._checksum(arrays)
    except (TypeError, KeyError):
        pass
    save_file({k: torch.as_tensor(v) for k, v in arrays.items()}, str(path), metadata=meta)


@pytest.mark.parametrize("case, message", [
    ("bf16 features", r"array 'feature' is BF16"),
    ("label_names 5", "label_names must be null or a list of 3 strings"),
    ("label_names too short", "label_names must be null or a list of 3 strings"),
    ("deeply nested label_names", "bad or missing metadata"),
    ("negative voxel_size", "voxel_size -0.05 is not a positive"),
    ("num_labels beyond 16 bits", "num_labels 70000 outside"),
    ("feature_dim 2.5", "bad or missing metadata"),
    ("negative tick", "tick -1 outside"),
    ("int64 keys", r"array 'keys' is I64"),
    ("an extra array", "do not match the format"),
    ("non-finite features", "'feature' holds non-finite values"),
    ("negative stamps", "'stamp' holds negative values"),
])
def test_every_field_of_a_crafted_file_is_validated(tmp_path, case, message):
    """Each case once crashed or would crash the loader (TypeError, RecursionError, ...) instead of a MapFileError."""
    import torch
    path = tmp_path / "map.safetensors"
    sample_map().save(path)
    arrays = {k: torch.from_numpy(v.copy()) for k, v in load_file(path).items()}
    changes = {
        "bf16 features": ({**arrays, "feature": arrays["feature"].to(torch.bfloat16)}, {}),
        "label_names 5": (arrays, {"label_names": "5"}),
        "label_names too short": (arrays, {"label_names": '["wall"]'}),
        "deeply nested label_names": (arrays, {"label_names": "[" * 50_000 + "]" * 50_000}),
        "negative voxel_size": (arrays, {"voxel_size": "-0.05"}),
        "num_labels beyond 16 bits": (arrays, {"num_labels": "70000"}),
        "feature_dim 2.5": (arrays, {"feature_dim": "2.5"}),
        "negative tick": (arrays, {"tick": "-1"}),
        "int64 keys": ({**arrays, "keys": arrays["keys"].long()}, {}),
        "an extra array": ({**arrays, "extra": torch.zeros(3)}, {}),
        "non-finite features": ({**arrays, "feature": arrays["feature"].index_fill(0, torch.tensor([3]),
                                                                                    float("inf"))}, {}),
        "negative stamps": ({**arrays, "stamp": arrays["stamp"] - 10**6}, {}),
    }
    rewrite_arrays(path, *changes[case][:1], **changes[case][1])
    with pytest.raises(MapFileError, match=message):
        VoxelMap.load(path)


def test_is_map_file_reads_only_the_header(tmp_path):
    path = tmp_path / "map.safetensors"
    sample_map().save(path)
    assert map_file.is_map_file(path)
    other = tmp_path / "other.safetensors"
    save_numpy({"x": np.zeros(3, np.float32)}, other)
    (tmp_path / "text").write_text("hello")
    (tmp_path / "huge").write_bytes((2**62).to_bytes(8, "little"))
    assert not any(map_file.is_map_file(tmp_path / n) for n in ("other.safetensors", "text", "huge", "missing"))


def test_stale_temp_files_of_dead_writers_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "map.safetensors"
    dead = tmp_path / f".map.safetensors.{2 ** 22 + 17}.{'a' * 32}.tmp"  # pid above pid_max: no such process
    alive = tmp_path / f".map.safetensors.{os.getpid()}.{'b' * 32}.tmp"  # a save in progress in this process
    old_legacy = tmp_path / f".map.safetensors.{'c' * 32}.tmp"  # written before temp names carried the pid
    new_legacy = tmp_path / f".map.safetensors.{'d' * 32}.tmp"
    other = tmp_path / f".other.safetensors.{2 ** 22 + 17}.{'e' * 32}.tmp"
    for p in (dead, alive, old_legacy, new_legacy, other):
        p.write_bytes(b"x" * 100)
    os.utime(old_legacy, (0, 0))
    sample_map().save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, new_legacy.name, other.name, "map.safetensors"])  # only this target's stale files go
    assert atomic_write.remove_stale_temps(tmp_path, suffix=".ply") == []
    assert atomic_write.remove_stale_temps(tmp_path, suffix=".safetensors") == [other]


def test_kill_9_mid_save_keeps_the_map_and_the_next_save_removes_the_temp_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    path = tmp_path / "map.safetensors"
    old = sample_map(seed=0)
    old.save(path)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from ov3dseg_core.atomic_write import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp, open(tmp, 'wb') as f:\n"
        "    while True:\n"
        "        f.write(b'x' * 65536); f.flush(); time.sleep(0.01)\n"), str(path)])
    try:
        deadline = time.monotonic() + 30.0
        while not any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline and writer.poll() is None, "the writer never started its temp file"
            time.sleep(0.02)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 1
    assert_same_map(old, VoxelMap.load(path))  # the previous map survives the kill
    sample_map(seed=1).save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.safetensors"]  # the stale temp file is gone
