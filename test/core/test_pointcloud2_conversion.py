"""sensor_msgs/PointCloud2 <-> NumPy: hand-built layouts, all datatypes, count > 1, padding, organised clouds,
NaNs, both byte orders (checked against an independent per-point struct decoder), round trips through real rclpy
serialization and rosbags' CDR encoding, PCL colour packing, and every error path."""
import array
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ov3dseg_core.msgs import MessageFormatError
from ov3dseg_core.msgs.pointcloud2 import (FLOAT32, FLOAT64, INT8, INT16, INT32, UINT8, UINT16, UINT32,
                                            array_to_pointcloud2_fields, pack_rgb, pointcloud2_to_array,
                                            pointcloud2_to_xyz, unpack_rgb)

STRUCT_CHAR = {INT8: "b", UINT8: "B", INT16: "h", UINT16: "H", INT32: "i", UINT32: "I", FLOAT32: "f", FLOAT64: "d"}
"""Independent reference: PointField datatype -> struct format character."""


def message(cloud_fields, **changes):
    """A duck-typed PointCloud2 from a field dict (fields as (name, offset, datatype, count) tuples)."""
    fields = {**cloud_fields, **changes}
    point_fields = [SimpleNamespace(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields["fields"]]
    return SimpleNamespace(**{**fields, "fields": point_fields})


def reference_decode(msg):
    """Per-point struct decoding: {field name: list of values (tuples for count > 1)} in row-major point order."""
    data = bytes(msg.data)
    order = ">" if msg.is_bigendian else "<"
    values = {f.name: [] for f in msg.fields}
    for row in range(msg.height):
        for col in range(msg.width):
            base = row * msg.row_step + col * msg.point_step
            for f in msg.fields:
                value = struct.unpack_from(f"{order}{f.count}{STRUCT_CHAR[f.datatype]}", data, base + f.offset)
                values[f.name].append(value if f.count > 1 else value[0])
    return values


def assert_matches_reference(cloud, msg):
    """``cloud`` (decoded by the code under test) equals the per-point reference, NaN == NaN."""
    assert cloud.shape == (msg.height * msg.width,)
    assert all(cloud.dtype[name].base.isnative for name in cloud.dtype.names)
    for name, expected in reference_decode(msg).items():
        np.testing.assert_array_equal(cloud[name], np.array(expected, dtype=cloud.dtype[name].base).reshape(
            cloud[name].shape))


def hand_built_cloud(is_bigendian):
    """2 x 2 organised cloud: x, y, z float32, 4 padding bytes, rgb float32, intensity float64, ring uint16[2];
    point_step 32, row_step 70 (6 padding bytes per row)."""
    order = ">" if is_bigendian else "<"
    layout = [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("rgb", 16, FLOAT32, 1),
              ("intensity", 20, FLOAT64, 1), ("ring", 28, UINT16, 2)]
    rows = []
    for row in range(2):
        points = b""
        for col in range(2):
            i = row * 2 + col
            point = bytearray(32)
            struct.pack_into(order + "3f", point, 0, i, -i, np.nan if i == 3 else 0.5 * i)
            struct.pack_into(order + "I", point, 16, 0x00102030 + i)  # rgb bits
            struct.pack_into(order + "d2H", point, 20, 100.0 + i, i, 7)
            points += bytes(point)
        rows.append(points + b"\xee" * 6)
    return message(dict(height=2, width=2, fields=layout, is_bigendian=is_bigendian, point_step=32, row_step=70,
                        data=b"".join(rows), is_dense=False))


@pytest.mark.parametrize("is_bigendian", [False, True])
def test_hand_built_layout(is_bigendian):
    msg = hand_built_cloud(is_bigendian)
    cloud = pointcloud2_to_array(msg)
    np.testing.assert_array_equal(cloud["x"], [0, 1, 2, 3])
    np.testing.assert_array_equal(cloud["intensity"], [100, 101, 102, 103])
    np.testing.assert_array_equal(cloud["ring"], [[0, 7], [1, 7], [2, 7], [3, 7]])
    np.testing.assert_array_equal(unpack_rgb(cloud["rgb"]), [[0x10, 0x20, 0x30 + i] for i in range(4)])
    assert_matches_reference(cloud, msg)
    xyz, keep = pointcloud2_to_xyz(msg)
    np.testing.assert_array_equal(xyz, np.float32([[0, 0, 0], [1, -1, 0.5], [2, -2, 1.0]]))
    np.testing.assert_array_equal(keep, [True, True, True, False])
    xyz, keep = pointcloud2_to_xyz(msg, remove_nans=False)
    assert xyz.shape == (4, 3) and np.isnan(xyz[3, 2]) and keep.all()


def test_unpadded_cloud_is_a_view():
    cloud = np.zeros(5, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    fields = array_to_pointcloud2_fields(cloud)
    buffer = array.array("B", fields["data"].tobytes())
    decoded = pointcloud2_to_array(message(fields, data=buffer))
    assert np.shares_memory(decoded, np.frombuffer(buffer, dtype=np.uint8))


def test_array_to_fields_hand_computed():
    cloud = np.zeros(3, dtype={"names": ["x", "y", "z", "label", "normal"],
                               "formats": ["<f4", "<f4", "<f4", "<i4", ("<f8", (3,))],
                               "offsets": [0, 4, 8, 16, 24], "itemsize": 56})
    cloud["x"] = [1, 2, np.nan]
    fields = array_to_pointcloud2_fields(cloud)
    assert fields["fields"] == [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1),
                                ("label", 16, INT32, 1), ("normal", 24, FLOAT64, 3)]
    assert (fields["height"], fields["width"], fields["point_step"], fields["row_step"]) == (1, 3, 56, 168)
    assert fields["is_bigendian"] is False and fields["is_dense"] is False
    assert fields["data"].dtype == np.uint8 and fields["data"].size == 168
    organised = array_to_pointcloud2_fields(np.zeros((2, 3), dtype=">f8,>i2"))
    assert (organised["height"], organised["width"], organised["row_step"]) == (2, 3, 30)
    assert organised["is_bigendian"] is True and organised["is_dense"] is True


def test_pack_rgb_pcl_convention():
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]], dtype=np.uint8)
    packed = pack_rgb(colors)
    assert packed.dtype == np.float32
    np.testing.assert_array_equal(packed.view(np.uint32), [0xFF0000, 0x00FF00, 0x0000FF, 0x010203])
    np.testing.assert_array_equal(unpack_rgb(packed), colors)
    np.testing.assert_array_equal(unpack_rgb(np.array([0xFF010203], dtype=np.uint32)), [[1, 2, 3]])  # alpha ignored
    np.testing.assert_array_equal(unpack_rgb(packed.astype(">f4")), colors)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)), max_size=20))
def test_rgb_round_trip_property(colors):
    colors = np.array(colors, dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(unpack_rgb(pack_rgb(colors)), colors)


@pytest.mark.parametrize("call", [
    lambda: pack_rgb(np.zeros((2, 3), dtype=np.int32)), lambda: pack_rgb(np.zeros((2, 4), dtype=np.uint8)),
    lambda: unpack_rgb(np.zeros(2, dtype=np.float64)), lambda: unpack_rgb(np.zeros((2, 1), dtype=np.float32))])
def test_rgb_errors(call):
    with pytest.raises(ValueError):
        call()


@st.composite
def layouts(draw):
    """A random cloud layout: fields of random datatypes and counts at padded offsets, point/row padding, byte
    order, organised or not, and random point bytes."""
    n_fields = draw(st.integers(1, 5))
    datatypes = draw(st.lists(st.sampled_from(sorted(STRUCT_CHAR)), min_size=n_fields, max_size=n_fields))
    fields, offset = [], 0
    for i, datatype in enumerate(datatypes):
        offset += draw(st.integers(0, 3))
        count = draw(st.integers(1, 3))
        fields.append((f"f{i}", offset, datatype, count))
        offset += struct.calcsize("<" + STRUCT_CHAR[datatype]) * count
    point_step = offset + draw(st.integers(0, 5))
    height, width = draw(st.integers(1, 3)), draw(st.integers(0, 5))
    row_step = width * point_step + draw(st.integers(0, 9))
    data = draw(st.binary(min_size=height * row_step, max_size=height * row_step))
    return message(dict(height=height, width=width, fields=fields, is_bigendian=draw(st.booleans()),
                        point_step=point_step, row_step=row_step, data=data, is_dense=False))


@settings(max_examples=80, deadline=None)
@given(layouts())
def test_random_layouts_match_per_point_reference(msg):
    assert_matches_reference(pointcloud2_to_array(msg), msg)


@settings(max_examples=50, deadline=None)
@given(layouts(), st.booleans())
def test_encode_decode_round_trip_property(msg, big_endian):
    cloud = pointcloud2_to_array(msg)
    if big_endian:
        cloud = cloud.astype(cloud.dtype.newbyteorder(">"))
    fields = array_to_pointcloud2_fields(cloud)
    assert fields["is_bigendian"] == (big_endian and any(cloud.dtype[n].base.itemsize > 1 for n in cloud.dtype.names))
    decoded = pointcloud2_to_array(message(fields))
    assert decoded.dtype == cloud.dtype.newbyteorder("=")
    for name in cloud.dtype.names:
        np.testing.assert_array_equal(decoded[name], cloud[name])


def xyz_rgb_label_cloud(n=50, seed=0):
    """Structured x, y, z, rgb, label cloud with some NaN points."""
    rng = np.random.default_rng(seed)
    cloud = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "<u2")])
    for axis in "xyz":
        cloud[axis] = rng.uniform(-10, 10, n)
    cloud["x"][::7] = np.nan
    cloud["rgb"] = pack_rgb(rng.integers(0, 256, (n, 3), dtype=np.uint8))
    cloud["label"] = rng.integers(0, 65536, n)
    return cloud


def rclpy_cloud(fields):
    """A real rclpy sensor_msgs/PointCloud2 from cloud fields."""
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    point_fields = [sensor_msgs.PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields["fields"]]
    return sensor_msgs.PointCloud2(**{**fields, "fields": point_fields,
                                      "data": array.array("B", fields["data"].tobytes())})


def assert_same_cloud(decoded, cloud):
    """Same field names and values (NaN == NaN)."""
    assert decoded.dtype.names == cloud.dtype.names
    for name in cloud.dtype.names:
        np.testing.assert_array_equal(decoded[name], cloud[name])


@pytest.mark.parametrize("byteorder", "<>")
def test_rclpy_serialization_round_trip(byteorder):
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    cloud = xyz_rgb_label_cloud()
    cloud = cloud.astype(cloud.dtype.newbyteorder(byteorder))
    received = serialization.deserialize_message(
        serialization.serialize_message(rclpy_cloud(array_to_pointcloud2_fields(cloud))), sensor_msgs.PointCloud2)
    assert received.is_bigendian == (byteorder == ">") and received.is_dense is False
    assert_same_cloud(pointcloud2_to_array(received), cloud)
    xyz, keep = pointcloud2_to_xyz(received)
    np.testing.assert_array_equal(keep, np.isfinite(cloud["x"]))
    np.testing.assert_array_equal(xyz, np.stack([cloud[a][keep] for a in "xyz"], axis=1))


def rosbags_store():
    """rosbags typestore of the newest ROS 2 distribution it knows."""
    typesys = pytest.importorskip("rosbags.typesys")
    return typesys.get_typestore(getattr(typesys.Stores, "ROS2_KILTED", typesys.Stores.ROS2_HUMBLE))


def rosbags_cloud(store, fields):
    """A rosbags sensor_msgs/PointCloud2 from cloud fields (data passed as the ndarray)."""
    types = store.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=2, nanosec=0),
                                          frame_id="lidar")
    point_field = types["sensor_msgs/msg/PointField"]
    return types["sensor_msgs/msg/PointCloud2"](header=header, **{
        **fields, "fields": [point_field(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields["fields"]]})


@pytest.mark.parametrize("byteorder", "<>")
def test_rosbags_cdr_cross_check(byteorder):
    """rosbags CDR -> rclpy -> decode, and rclpy CDR -> rosbags -> decode, for an organised padded cloud."""
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    store = rosbags_store()
    flat = xyz_rgb_label_cloud(n=24, seed=1)
    cloud = flat.astype(flat.dtype.newbyteorder(byteorder)).reshape(4, 6)
    fields = array_to_pointcloud2_fields(cloud)
    rows = fields["data"].reshape(4, -1)
    fields = {**fields, "row_step": fields["row_step"] + 4,
              "data": np.concatenate([rows, np.zeros((4, 4), np.uint8)], axis=1).reshape(-1)}
    bag_msg = rosbags_cloud(store, fields)
    from_rclpy = serialization.deserialize_message(bytes(store.serialize_cdr(bag_msg, bag_msg.__msgtype__)),
                                                   sensor_msgs.PointCloud2)
    assert (from_rclpy.height, from_rclpy.width, from_rclpy.header.frame_id) == (4, 6, "lidar")
    assert_same_cloud(pointcloud2_to_array(from_rclpy), flat)
    from_rosbags = store.deserialize_cdr(serialization.serialize_message(rclpy_cloud(fields)), bag_msg.__msgtype__)
    assert_same_cloud(pointcloud2_to_array(from_rosbags), flat)
    np.testing.assert_array_equal(pointcloud2_to_xyz(from_rosbags)[1], np.isfinite(flat["x"]))


def base_fields():
    """Fields of a valid 2-point x, y, z float32 cloud."""
    return array_to_pointcloud2_fields(np.zeros(2, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")]))


XYZ = [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1)]


@pytest.mark.parametrize("changes, match", [
    (dict(fields=XYZ + [("w", 12, 9, 1)]), "field 'w' has unknown datatype 9"),
    (dict(fields=XYZ + [("x", 0, FLOAT32, 1)]), "unique"),
    (dict(fields=XYZ + [("", 0, FLOAT32, 1)]), "empty name"),
    (dict(fields=XYZ[:2] + [("z", 8, FLOAT32, 0)]), "field 'z' has count 0"),
    (dict(fields=XYZ[:2] + [("z", 10, FLOAT32, 1)]), "field 'z' .* does not fit in point_step 12"),
    (dict(fields=XYZ[:2] + [("z", 8, FLOAT64, 1)]), "does not fit in point_step 12"),
    (dict(row_step=20), "row_step 20 is less than width 2 x point_step 12 = 24"),
    (dict(data=np.zeros(23, np.uint8)), "data has 23 bytes, expected height 1 x row_step 24 = 24"),
    (dict(data=np.zeros(25, np.uint8)), "data has 25 bytes"),
    (dict(height=2), "expected height 2 x row_step 24 = 48"),
])
def test_decode_errors(changes, match):
    msg = message(base_fields(), **changes)
    with pytest.raises(MessageFormatError, match=match):
        pointcloud2_to_array(msg)
    with pytest.raises(MessageFormatError, match=match):
        pointcloud2_to_xyz(msg)


@pytest.mark.parametrize("fields, match", [
    (XYZ[1:], "no 'x' field"),
    (XYZ[:2] + [("intensity", 8, FLOAT32, 1)], "no 'z' field"),
    (XYZ[:1] + [("y", 4, FLOAT32, 2)], "field 'y' has count 2"),
])
def test_xyz_errors(fields, match):
    msg = message(base_fields(), fields=fields)
    pointcloud2_to_array(msg)  # a valid cloud, just without usable x, y, z
    with pytest.raises(MessageFormatError, match=match):
        pointcloud2_to_xyz(msg)


@pytest.mark.parametrize("cloud, match", [
    (np.zeros((2, 3), np.float32), "structured array"),
    (np.zeros((2, 2, 2), dtype="<f4,<f4"), "structured array"),
    (np.zeros(2, dtype=[("x", "<f2")]), "field 'x' has unsupported type"),
    (np.zeros(2, dtype=[("x", "<i8")]), "unsupported type"),
    (np.zeros(2, dtype=[("x", "?")]), "unsupported type"),
    (np.zeros(2, dtype=[("x", [("a", "<f4")])]), "unsupported type"),
    (np.zeros(2, dtype=[("x", "<f4"), ("y", ">f4")]), "mix byte orders"),
])
def test_encode_errors(cloud, match):
    with pytest.raises(MessageFormatError, match=match):
        array_to_pointcloud2_fields(cloud)
