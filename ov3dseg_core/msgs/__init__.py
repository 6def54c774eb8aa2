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
