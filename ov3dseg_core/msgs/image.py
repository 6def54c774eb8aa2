"""sensor_msgs/Image <-> NumPy, vectorised, honouring ``step`` row padding and ``is_bigendian``.

Encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16, rgb16, bgr16, rgba16, bgra16 and the OpenCV types
{8U, 8S, 16U, 16S, 32S, 32F, 64F}C{1..4} (e.g. 16UC1 depth in millimetres, 32FC1 depth in metres, 8UC3).
Channel order is kept as on the wire (bgr8 stays BGR).
"""
from __future__ import annotations

import re
import sys

import numpy as np

from ov3dseg_core.msgs import MessageFormatError, padded_rows

NAMED_ENCODINGS = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4), "mono8": ("u1", 1),
    "mono16": ("u2", 1), "rgb16": ("u2", 3), "bgr16": ("u2", 3), "rgba16": ("u2", 4), "bgra16": ("u2", 4),
}
"""Named encodings: (NumPy base type, channels)."""

OPENCV_DEPTHS = {"8U": "u1", "8S": "i1", "16U": "u2", "16S": "i2", "32S": "i4", "32F": "f4", "64F": "f8"}
"""OpenCV depth codes of the '<bits><U|S|F>C<channels>' encodings and their NumPy base types."""

_OPENCV_ENCODING = re.compile(r"(\d+[USF])C([1-4])")


def encoding_format(encoding: str) -> tuple[np.dtype, int]:
    """(native-endian element dtype, channels) of an image encoding; MessageFormatError if unsupported."""
    if encoding in NAMED_ENCODINGS:
        base, channels = NAMED_ENCODINGS[encoding]
        return np.dtype(base), channels
    match = _OPENCV_ENCODING.fullmatch(encoding)
    if match and match.group(1) in OPENCV_DEPTHS:
        return np.dtype(OPENCV_DEPTHS[match.group(1)]), int(match.group(2))
    raise MessageFormatError(f"unsupported image encoding {encoding!r} (supported: {', '.join(NAMED_ENCODINGS)} "
                             f"and <8U|8S|16U|16S|32S|32F|64F>C<1-4>)")


def image_to_numpy(msg) -> np.ndarray:
    """Pixels of a sensor_msgs/Image (``.height .width .encoding .is_bigendian .step .data``) in native byte order.

    Returns (H, W) for one channel, else (H, W, C). Without a byte swap the result is a view of ``msg.data`` (no
    copy; writable only if the message buffer is). MessageFormatError for an unknown encoding, a ``step`` shorter
    than a row of pixels, or a data length other than height * step.
    """
    dtype, channels = encoding_format(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    rows = padded_rows(msg.data, height, step, row_bytes, f"{msg.encoding} image:", "step",
                       f"width {width} x {channels} channel(s) x {dtype.itemsize} byte(s)")
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    pixels = rows.view(wire)
    pixels = pixels.reshape((height, width) if channels == 1 else (height, width, channels))
    return pixels if wire.isnative else pixels.astype(dtype)


def numpy_to_image_fields(array: np.ndarray, encoding: str) -> dict:
    """Fields of a sensor_msgs/Image holding ``array`` ((H, W) or (H, W, C) matching ``encoding``).

    Returns dict(height, width, encoding, is_bigendian (0/1, from the array's byte order), step (unpadded),
    data (flat uint8 ndarray)). MessageFormatError if the array's dtype or channel count does not fit the encoding
    (no silent casts).
    """
    dtype, channels = encoding_format(encoding)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == channels == 1:
        array = array[:, :, 0]
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        raise MessageFormatError(f"{encoding} needs an array of shape (H, W{'' if channels == 1 else f', {channels}'})"
                                 f", got {array.shape}")
    if array.dtype.newbyteorder("=") != dtype:
        raise MessageFormatError(f"{encoding} needs {dtype} pixels, got {array.dtype}")
    big = array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big")
    height, width = array.shape[:2]
    return dict(height=height, width=width, encoding=encoding, is_bigendian=int(big),
                step=width * channels * dtype.itemsize, data=np.ascontiguousarray(array).reshape(-1).view(np.uint8))
