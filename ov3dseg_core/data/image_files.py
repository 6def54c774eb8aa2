"""Image and small text-matrix files as used by the dataset layouts (PIL only, no OpenCV)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def read_color(path_or_bytes: str | Path | bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """A colour image file (or encoded bytes) as (H, W, 3) uint8 RGB; resized (bilinear) to ``size`` = (W, H)."""
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as image:
        image = image.convert("RGB")
        if size is not None and image.size != tuple(size):
            image = image.resize(tuple(size), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8).copy()


def resize_color(color: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, 3) uint8 RGB to ``size`` = (W, H), bilinear."""
    return np.asarray(Image.fromarray(color).resize(tuple(size), Image.BILINEAR), dtype=np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header only."""
    with Image.open(path) as image:
        return image.size


def read_u16(path: str | Path) -> np.ndarray:
    """A 16-bit single-channel PNG (depth in sensor units or class ids) as (H, W) uint16."""
    with Image.open(path) as image:
        if image.mode not in ("I;16", "I;16B", "I", "L"):
            raise ValueError(f"{path}: expected a 16-bit single-channel image, got PIL mode {image.mode}")
        array = np.asarray(image)
    if array.dtype != np.uint16:
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"{path}: values outside the uint16 range")
        array = array.astype(np.uint16)
    return array


def write_u16(path: str | Path, array: np.ndarray) -> None:
    """Write (H, W) uint16 as a 16-bit greyscale PNG."""
    array = np.asarray(array)
    if array.dtype != np.uint16 or array.ndim != 2:
        raise ValueError(f"write_u16 needs a (H, W) uint16 array, got {array.dtype} {array.shape}")
    Image.fromarray(array).save(path)


def write_color(path: str | Path, color: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write (H, W, 3) uint8 RGB; the suffix (.png/.jpg) picks the encoding."""
    color = np.asarray(color)
    if color.dtype != np.uint8 or color.ndim != 3 or color.shape[2] != 3:
        raise ValueError(f"write_color needs a (H, W, 3) uint8 array, got {color.dtype} {color.shape}")
    kwargs = {"quality": jpeg_quality} if Path(path).suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(color).save(path, **kwargs)


def read_matrix_txt(path: str | Path, shape: tuple[int, ...] = (4, 4)) -> np.ndarray:
    """A whitespace-separated matrix text file (ScanNet pose/intrinsic style) as float64 ``shape``."""
    values = np.array(Path(path).read_text().split(), dtype=np.float64)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} numbers for a {shape} matrix, got {values.size}")
    return values.reshape(shape)


def write_matrix_txt(path: str | Path, matrix: np.ndarray) -> None:
    """Write a 2-D matrix as rows of space-separated numbers (full float64 precision)."""
    np.savetxt(path, np.asarray(matrix, dtype=np.float64), fmt="%.17g")
