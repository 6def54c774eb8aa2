"""The one place that opens ov3dseg safetensors files by their header: the error type and the format check.

Model checkpoints (``training/checkpoint.py``) and converted released weights (``models/backbones/convert.py``)
both store an ``ov3dseg_format`` entry in the safetensors metadata; both are read here first, without loading
any tensor, so a missing, corrupt or foreign file fails with one clear CheckpointError.
"""
from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open


class CheckpointError(ValueError):
    """A weights file that is missing, corrupt, of another format, or does not fit the model."""


def read_format_metadata(path: str | Path, expected_format: str, what: str = "checkpoint",
                         hint: str = "") -> dict[str, str]:
    """The string metadata of the safetensors file ``path`` after checking its ``ov3dseg_format``.

    ``what`` names the file in errors ("checkpoint", "converted weights"); ``hint`` is appended to the
    wrong-format error (how to make a file of the expected format).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{what} {path} is not a readable safetensors file: {exc}") from exc
    if metadata.get("ov3dseg_format") != expected_format:
        raise CheckpointError(f"{what} {path} has format {metadata.get('ov3dseg_format')!r}, expected "
                              f"{expected_format!r}{hint}")
    return metadata
