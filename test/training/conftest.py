"""A small simulated scene shared by the training tests (160x120 frames keep them fast)."""
import pytest

from ov3dseg_core.sim.world import CameraConfig, SimConfig, generate_scene


@pytest.fixture(scope="session")
def small_scene():
    config = SimConfig(frames=5, use_lidar=False, camera=CameraConfig(width=160, height=120))
    return generate_scene(4, room_type="living_room", config=config).to_scene()  # shows a sofa and a bookshelf


@pytest.fixture(scope="session")
def minilm():
    from ov3dseg_core.models.text import build_text_encoder

    return build_text_encoder("minilm")
