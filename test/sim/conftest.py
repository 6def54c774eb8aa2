"""Shared simulator scenes for the sim tests."""
import pytest
from sim_scenes import small_config

from ov3dseg_core.sim.sensors import DepthNoiseModel
from ov3dseg_core.sim.world import generate_scene


@pytest.fixture(scope="package")
def clean_scene():
    """A living room without depth noise (exact depth), 4 frames of 160 x 120."""
    return generate_scene(11, "living_room", config=small_config(depth_noise=DepthNoiseModel(scale=0.0)))
