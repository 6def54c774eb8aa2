"""Scenes for training and evaluation: dataset folders as given, simulated scenes generated once and cached."""
from __future__ import annotations

import shutil
from pathlib import Path

from tqdm import tqdm

from ov3dseg_core.data.frames import Scene
from ov3dseg_core.data.readers import open_scene
from ov3dseg_core.training.config import TrainDataConfig

COMPLETE_MARKER = ".complete"


def simulated_scene_dir(seed: int, frames: int, cache_dir: str | Path, width: int = 640, height: int = 480) -> Path:
    """The dataset folder of simulated scene ``seed`` (``frames`` camera frames of width x height pixels),
    generating it on first use.

    Written to a temporary folder and renamed when complete, so an interrupted run never leaves a partial scene.
    """
    size = "" if (width, height) == (640, 480) else f"_{width}x{height}"
    out = Path(cache_dir) / f"sim_{seed:06d}_f{frames}{size}"
    if (out / COMPLETE_MARKER).exists():
        return out
    from ov3dseg_core.sim.export import write_dataset
    from ov3dseg_core.sim.world import CameraConfig, SimConfig, generate_scene

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = SimConfig(frames=frames, use_lidar=False, camera=CameraConfig(width=width, height=height))
    write_dataset(generate_scene(seed, config=config), tmp)
    (tmp / COMPLETE_MARKER).touch()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _load(dirs: list[str], seeds: range, cfg: TrainDataConfig, what: str) -> list[Scene]:
    paths = [Path(d) for d in dirs]
    paths += [simulated_scene_dir(s, cfg.sim_frames, cfg.cache_dir, cfg.sim_width, cfg.sim_height)
              for s in tqdm(seeds, desc=f"{what} scenes", unit="scene", disable=len(seeds) == 0)]
    return [open_scene(p) for p in paths]


def training_scenes(cfg: TrainDataConfig) -> list[Scene]:
    return _load(cfg.scene_dirs, range(cfg.sim_seed_start, cfg.sim_seed_start + cfg.sim_scenes), cfg, "training")


def validation_scenes(cfg: TrainDataConfig) -> list[Scene]:
    return _load([], range(cfg.val_seed_start, cfg.val_seed_start + cfg.val_scenes), cfg, "validation")


def heldout_scenes(cfg: TrainDataConfig) -> list[Scene]:
    seeds = range(cfg.heldout_seed_start, cfg.heldout_seed_start + cfg.heldout_scenes)
    return _load(cfg.heldout_dirs, seeds, cfg, "held-out")
