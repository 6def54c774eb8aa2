"""Scenes for training and evaluation: dataset folders as given, simulated scenes generated once and cached."""
from __future__ import annotations

import shutil
from pathlib import Path

from tqdm import tqdm

from ov3dseg_core.data.frames import Scene
from ov3dseg_core.data.readers import open_scene
from ov3dseg_core.training.config import TrainDataConfig

COMPLETE_MARKER = ".complete"


def simulated_scene_dir(seed: int, frames: int, cache_dir: str | Path) -> Path:
    """The dataset folder of simulated scene ``seed`` (``frames`` camera frames), generating it on first use.

    Written to a temporary folder and renamed when complete, so an interrupted run never leaves a partial scene.
    """
    out = Path(cache_dir) / f"sim_{seed:06d}_f{frames}"
    if (out / COMPLETE_MARKER).exists():
        return out
    from ov3dseg_core.sim.export import write_dataset
    from ov3dseg_core.sim.world import SimConfig, generate_scene

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_dataset(generate_scene(seed, config=SimConfig(frames=frames, use_lidar=False)), tmp)
    (tmp / COMPLETE_MARKER).touch()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _load(dirs: list[str], seeds: range, frames: int, cache_dir: str, what: str) -> list[Scene]:
    paths = [Path(d) for d in dirs]
    paths += [simulated_scene_dir(s, frames, cache_dir) for s in tqdm(seeds, desc=f"{what} scenes", unit="scene",
                                                                        disable=len(seeds) == 0)]
    return [open_scene(p) for p in paths]


def training_scenes(cfg: TrainDataConfig) -> list[Scene]:
    seeds = range(cfg.sim_seed_start, cfg.sim_seed_start + cfg.sim_scenes)
    return _load(cfg.scene_dirs, seeds, cfg.sim_frames, cfg.cache_dir, "training")


def heldout_scenes(cfg: TrainDataConfig) -> list[Scene]:
    seeds = range(cfg.heldout_seed_start, cfg.heldout_seed_start + cfg.heldout_scenes)
    return _load(cfg.heldout_dirs, seeds, cfg.sim_frames, cfg.cache_dir, "held-out")
