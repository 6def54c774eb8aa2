"""Labelled synthetic indoor worlds: procedural rooms of ScanNet-20 furniture, ray-cast RGB-D and LiDAR sensors on a
collision-free trajectory, per-pixel and per-point ground truth; exported as ROS 2 bags and dataset folders.

    from ov3dseg_core.sim import generate_scene
    from ov3dseg_core.sim.export import write_bag, write_dataset

    scene = generate_scene(seed=7, room_type="office", frames=30)
    write_bag(scene, "office.mcap")

Modules: shapes (parametric meshes), furniture (one builder per category), layout (rooms and placement),
trajectory (sensor path), sensors (ray-cast camera and LiDAR), world (generate_scene), export (bag, folder).
"""
from ov3dseg_core.sim.world import SimConfig, SimScene, generate_scene

__all__ = ["SimConfig", "SimScene", "generate_scene"]
