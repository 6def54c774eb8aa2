"""Mosaic3D: data engine (``data_engine``), encoder with the region contrastive loss and instance decoder
(``model``, ``decoder``, ``losses``), training from simulated scenes (``training``)."""
from ov3dseg_core.models.methods.mosaic3d.decoder import Objects
from ov3dseg_core.models.methods.mosaic3d.model import Mosaic3D, Mosaic3DConfig, voxel_objects

__all__ = ["Mosaic3D", "Mosaic3DConfig", "Objects", "voxel_objects"]
