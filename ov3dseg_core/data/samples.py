"""Locating the living-room sample: 5 posed RGB-D frames of the Redwood/ICL-NUIM "living-room1" sequence."""
from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_LIVING_ROOM = REPO_ROOT.parent / "shared" / "data" / "living_room"
ENV_VAR = "OV3DSEG_SAMPLE_DIR"
_REQUIRED = ("color", "depth", "trajectory.log")


def _missing(path: Path) -> list[str]:
    return [name for name in _REQUIRED if not (path / name).exists()]


def find_living_room(explicit: str | Path | None = None) -> Path:
    """The living-room sample folder (color/, depth/, trajectory.log, camera_primesense.json).

    Tried in order: ``explicit``, $OV3DSEG_SAMPLE_DIR, ../shared/data/living_room next to the repository,
    then Open3D's downloader (``open3d.data.SampleRedwoodRGBDImages``, needs internet). An explicit folder
    that is incomplete is an error (no silent fallback). Raises FileNotFoundError saying what is missing.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        missing = _missing(path)
        if missing:
            raise FileNotFoundError(f"sample folder {path} lacks {', '.join(missing)}; it needs color/, depth/ "
                                    "and trajectory.log (Redwood layout)")
        return path
    tried = []
    for source, candidate in (("$" + ENV_VAR, os.environ.get(ENV_VAR)), ("shared data", SHARED_LIVING_ROOM)):
        if candidate:
            path = Path(candidate).expanduser()
            if not _missing(path):
                return path
            tried.append(f"{source} {path} (missing {', '.join(_missing(path))})")
    try:
        import open3d as o3d

        path = Path(o3d.data.SampleRedwoodRGBDImages().extract_dir)
        if not _missing(path):
            return path
        tried.append(f"Open3D download {path} (missing {', '.join(_missing(path))})")
    except Exception as exc:  # no open3d, no internet, or a failed download
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines() or [""]
        tried.append(f"Open3D download ({type(exc).__name__}: {reason[-1]})")
    raise FileNotFoundError(
        "living-room sample frames not found. Tried: " + "; ".join(tried) + ". Provide them with --from DIR or "
        f"${ENV_VAR}=DIR (a folder with color/*.jpg, depth/*.png, trajectory.log, camera_primesense.json), "
        f"place them at {SHARED_LIVING_ROOM}, or run once with internet so Open3D can download them.")
