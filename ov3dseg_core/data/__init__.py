"""Datasets and sensor logs: the Scene/RGBDFrame abstraction, readers, sample data, and bag writing.

``bag_writer`` (rosbags) is imported on demand: ``from ov3dseg_core.data.bag_writer import SensorBagWriter``.
"""
from ov3dseg_core.data.frames import LazyFrames, RGBDFrame, Scene
from ov3dseg_core.data.readers import detect_format, open_scene
from ov3dseg_core.data.readers.dataset_folder import open_dataset_folder, write_dataset_folder
from ov3dseg_core.data.samples import find_living_room

__all__ = ["LazyFrames", "RGBDFrame", "Scene", "detect_format", "find_living_room", "open_dataset_folder",
           "open_scene", "write_dataset_folder"]
