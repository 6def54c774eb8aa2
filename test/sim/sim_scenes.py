"""Small simulator configurations for the sim tests (160 x 120 images, few frames: fast on a 2-core CPU)."""
from ov3dseg_core.sim.sensors import LidarModel
from ov3dseg_core.sim.world import CameraConfig, SimConfig


def small_config(**overrides) -> SimConfig:
    base = dict(frames=4, camera=CameraConfig(width=160, height=120),
                lidar=LidarModel(beams=8, horizontal_resolution_deg=2.0), gt_spacing=0.04)
    base.update(overrides)
    return SimConfig(**base)
