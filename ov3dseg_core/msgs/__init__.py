"""ROS-free, duck-typed conversions between sensor_msgs messages and NumPy arrays (image, pointcloud2).

They accept any object with the message's attributes (rclpy messages, rosbags messages) and produce plain dicts
of field values that the ROS layer or a rosbags writer turns into messages.
"""
from __future__ import annotations

import numpy as np


class MessageFormatError(ValueError):
    """A message (or an array to be encoded) is malformed or uses an unsupported format."""


def data_as_uint8(data) -> np.ndarray:
    """The ``data`` field of a message as a flat uint8 array, without copying where the buffer protocol allows.

    Accepts bytes, bytearray, memoryview, array.array('B') (rclpy), NumPy arrays (rosbags) and sequences of ints.
    """
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def padded_rows(data, height: int, step: int, row_bytes: int, what: str, step_name: str, row_detail: str,
                ) -> np.ndarray:
    """The ``data`` field as (height, row_bytes) uint8 rows that start every ``step`` bytes (row padding dropped).

    MessageFormatError naming ``what`` (e.g. "rgb8 image:", "PointCloud2") when ``step`` is shorter than a row
    (``row_detail`` says how a row's size is made up) or the data length is not height * step.
    """
    if step < row_bytes:
        raise MessageFormatError(f"{what} {step_name} {step} is less than {row_detail} = {row_bytes}")
    flat = data_as_uint8(data)
    if flat.size != height * step:
        raise MessageFormatError(f"{what} data has {flat.size} bytes, expected height {height} x {step_name} "
                                 f"{step} = {height * step}")
    return flat.reshape(height, step)[:, :row_bytes]
