"""sensor_msgs/Image <-> NumPy: hand-built wire bytes, both byte orders, row padding, round trips through real rclpy
serialization and rosbags' CDR encoding, property tests, and every error path."""
import array
import struct
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ov3dseg_core.msgs import MessageFormatError
from ov3dseg_core.msgs.image import encoding_format, image_to_numpy, numpy_to_image_fields

ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "rgb16", "16UC1", "32FC1", "8UC1", "8UC3",
             "16SC1", "32SC1", "64FC1", "8SC4", "32FC3"]


def message(height, width, encoding, step, data, is_bigendian=0):
    """A duck-typed Image."""
    return SimpleNamespace(height=height, width=width, encoding=encoding, step=step, data=data,
                           is_bigendian=is_bigendian)


def random_pixels(rng, encoding, height, width, byteorder="="):
    """Random pixel array of ``encoding`` (including NaN/inf for floats) in the given byte order."""
    dtype, channels = encoding_format(encoding)
    shape = (height, width) if channels == 1 else (height, width, channels)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape).astype(dtype.newbyteorder(byteorder))


def padded(fields, padding):
    """Copy of image fields with ``padding`` junk bytes (0xAB) after every row."""
    rows = fields["data"].reshape(fields["height"], fields["step"])
    junk = np.full((fields["height"], padding), 0xAB, dtype=np.uint8)
    return {**fields, "step": fields["step"] + padding, "data": np.concatenate([rows, junk], axis=1).reshape(-1)}


def assert_same_pixels(actual, expected):
    """Equal values (NaN == NaN), native byte order, same shape."""
    assert actual.dtype.isnative and actual.dtype == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(actual, expected)


def test_rgb8_hand_built_with_padding():
    data = bytes([1, 2, 3, 4, 5, 6, 99, 99, 7, 8, 9, 10, 11, 12, 99, 99])  # 2 x 2 rgb8, step 8
    pixels = image_to_numpy(message(2, 2, "rgb8", 8, data))
    np.testing.assert_array_equal(pixels, [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]])
    assert pixels.shape == (2, 2, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("is_bigendian, fmt", [(0, "<"), (1, ">")])
def test_16uc1_and_32fc1_both_byte_orders(is_bigendian, fmt):
    depth_mm = image_to_numpy(message(1, 3, "16UC1", 6, struct.pack(fmt + "3H", 0, 1234, 65535), is_bigendian))
    np.testing.assert_array_equal(depth_mm, [[0, 1234, 65535]])
    assert depth_mm.dtype == np.uint16 and depth_mm.dtype.isnative
    depth_m = image_to_numpy(message(1, 2, "32FC1", 8, struct.pack(fmt + "2f", 1.5, float("nan")), is_bigendian))
    np.testing.assert_array_equal(depth_m, [[1.5, np.nan]])
    assert depth_m.dtype == np.float32 and depth_m.dtype.isnative


def test_odd_step_with_16_bit_pixels():
    rows = [struct.pack("<2H", 1, 2) + b"\x00", struct.pack("<2H", 3, 4) + b"\x00"]  # step 5: unaligned rows
    np.testing.assert_array_equal(image_to_numpy(message(2, 2, "mono16", 5, b"".join(rows))), [[1, 2], [3, 4]])


def test_data_as_list_and_view_without_copy():
    np.testing.assert_array_equal(image_to_numpy(message(1, 2, "mono8", 2, [7, 8])), [[7, 8]])
    buffer = array.array("B", [1, 2, 3, 4])
    pixels = image_to_numpy(message(2, 2, "8UC1", 2, buffer))
    assert np.shares_memory(pixels, np.frombuffer(buffer, dtype=np.uint8))


def test_numpy_to_image_fields_hand_computed():
    fields = numpy_to_image_fields(np.array([[1, 258]], dtype=">u2"), "16UC1")
    assert (fields["height"], fields["width"], fields["step"], fields["is_bigendian"]) == (1, 2, 4, 1)
    np.testing.assert_array_equal(fields["data"], [0, 1, 1, 2])
    fields = numpy_to_image_fields(np.array([[1, 258]], dtype="<u2"), "mono16")
    np.testing.assert_array_equal(fields["data"], [1, 0, 2, 1])
    assert fields["is_bigendian"] == 0 and fields["encoding"] == "mono16" and fields["data"].dtype == np.uint8
    assert numpy_to_image_fields(np.zeros((2, 3, 1), np.uint8), "mono8")["step"] == 3


@settings(max_examples=80, deadline=None)
@given(encoding=st.sampled_from(ENCODINGS), height=st.integers(0, 5), width=st.integers(0, 6),
       padding=st.integers(0, 7), byteorder=st.sampled_from("<>"), seed=st.integers(0, 2**32 - 1))
def test_round_trip_property(encoding, height, width, padding, byteorder, seed):
    pixels = random_pixels(np.random.default_rng(seed), encoding, height, width, byteorder)
    fields = padded(numpy_to_image_fields(pixels, encoding), padding)
    assert_same_pixels(image_to_numpy(SimpleNamespace(**fields)), pixels)


def rclpy_image(fields):
    """A real rclpy sensor_msgs/Image from image fields."""
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    return sensor_msgs.Image(**{**fields, "data": array.array("B", fields["data"].tobytes())})


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_rclpy_serialization_round_trip(encoding):
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    pixels = random_pixels(np.random.default_rng(0), encoding, 5, 7, ">")
    wire = serialization.serialize_message(rclpy_image(padded(numpy_to_image_fields(pixels, encoding), 3)))
    received = serialization.deserialize_message(wire, sensor_msgs.Image)
    assert received.is_bigendian == (1 if pixels.dtype.itemsize > 1 else 0)
    assert_same_pixels(image_to_numpy(received), pixels)


def rosbags_store():
    """rosbags typestore of the newest ROS 2 distribution it knows."""
    typesys = pytest.importorskip("rosbags.typesys")
    return typesys.get_typestore(getattr(typesys.Stores, "ROS2_KILTED", typesys.Stores.ROS2_HUMBLE))


def rosbags_image(store, fields):
    """A rosbags sensor_msgs/Image from image fields."""
    types = store.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=3, nanosec=5),
                                          frame_id="camera_color_optical_frame")
    return types["sensor_msgs/msg/Image"](header=header, **fields)


@pytest.mark.parametrize("encoding", ["rgb8", "bgra8", "16UC1", "32FC1", "16SC1"])
@pytest.mark.parametrize("byteorder", "<>")
def test_rosbags_cdr_cross_check(encoding, byteorder):
    """rosbags CDR -> rclpy -> decode, and rclpy CDR -> rosbags -> decode, both equal the source pixels."""
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    store = rosbags_store()
    pixels = random_pixels(np.random.default_rng(1), encoding, 4, 6, byteorder)
    fields = padded(numpy_to_image_fields(pixels, encoding), 2)
    bag_msg = rosbags_image(store, fields)
    cdr = bytes(store.serialize_cdr(bag_msg, bag_msg.__msgtype__))
    from_rclpy = serialization.deserialize_message(cdr, sensor_msgs.Image)
    assert from_rclpy.header.frame_id == "camera_color_optical_frame" and from_rclpy.step == fields["step"]
    assert_same_pixels(image_to_numpy(from_rclpy), pixels)
    from_rosbags = store.deserialize_cdr(serialization.serialize_message(rclpy_image(fields)), bag_msg.__msgtype__)
    assert_same_pixels(image_to_numpy(from_rosbags), pixels)


@pytest.mark.parametrize("msg, match", [
    (message(1, 1, "yuv422", 2, bytes(2)), "unsupported image encoding 'yuv422'"),
    (message(1, 1, "32UC1", 4, bytes(4)), "unsupported image encoding '32UC1'"),
    (message(1, 1, "8UC5", 5, bytes(5)), "unsupported image encoding"),
    (message(2, 3, "rgb8", 8, bytes(16)), "step 8 is less than width 3 x 3 channel"),
    (message(2, 3, "rgb8", 9, bytes(17)), "data has 17 bytes, expected height 2 x step 9 = 18"),
    (message(2, 3, "rgb8", 9, bytes(19)), "data has 19 bytes"),
    (message(2, 2, "32FC1", 8, bytes(8)), "data has 8 bytes, expected height 2 x step 8 = 16"),
])
def test_decode_errors(msg, match):
    with pytest.raises(MessageFormatError, match=match):
        image_to_numpy(msg)


@pytest.mark.parametrize("array, encoding, match", [
    (np.zeros((2, 2), np.float64), "32FC1", "32FC1 needs float32 pixels, got float64"),
    (np.zeros((2, 2), np.uint8), "16UC1", "needs uint16"),
    (np.zeros((2, 2), np.uint8), "rgb8", r"shape \(H, W, 3\)"),
    (np.zeros((2, 2, 4), np.uint8), "rgb8", r"shape \(H, W, 3\)"),
    (np.zeros((2, 2, 3), np.uint8), "mono8", r"shape \(H, W\)"),
    (np.zeros((2, 2), np.uint8), "jpeg", "unsupported image encoding"),
])
def test_encode_errors(array, encoding, match):
    with pytest.raises(MessageFormatError, match=match):
        numpy_to_image_fields(array, encoding)


def test_native_byte_order_flag():
    fields = numpy_to_image_fields(np.zeros((1, 1), np.float32), "32FC1")
    assert fields["is_bigendian"] == int(sys.byteorder == "big")
