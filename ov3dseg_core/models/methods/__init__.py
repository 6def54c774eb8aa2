"""Methods (REGISTRY group "method"): SAS, GeoGuide and Mosaic3D, behind ``methods.base.DistillationMethod``.

Select one in a training YAML with a ``method:`` mapping (``type: SAS`` or ``type: GeoGuide`` plus its config);
``ov3dseg train`` then trains it on the config's simulated scenes, and ``MapSegmenter.from_checkpoint`` rebuilds
it from the checkpoint.
"""
from ov3dseg_core.models.methods.base import (
    DistillationMethod, MethodConfig, TeacherConfig, method_class, method_config,
)
from ov3dseg_core.models.methods.geoguide import GeoGuide, GeoGuideConfig
from ov3dseg_core.models.methods.mosaic3d import Mosaic3D, Mosaic3DConfig
from ov3dseg_core.models.methods.sas import SAS, SASConfig
from ov3dseg_core.models.methods.training import load_method, prepare_method_training

__all__ = [
    "SAS", "DistillationMethod", "GeoGuide", "GeoGuideConfig", "MethodConfig", "Mosaic3D", "Mosaic3DConfig",
    "SASConfig", "TeacherConfig",
    "load_method", "method_class", "method_config", "prepare_method_training",
]
