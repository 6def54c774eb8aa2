"""2D teachers for distillation into 3D: plug-in interfaces, offline stand-ins, SAS's text alignment, capability
estimate and feature fusion rules."""
from ov3dseg_core.models.teachers.alignment import AlignedMaskTeacher, paint_masks, replace_noun
from ov3dseg_core.models.teachers.base import Captioner, DenseTeacher, MaskSet, MaskTeacher
from ov3dseg_core.models.teachers.capability import (
    DiffusionSAMSynthesizer, ImageSynthesizer, SimulatedSynthesizer, aggregate_cross_attention, binary_miou,
    estimate_capability,
)
from ov3dseg_core.models.teachers.fusion import FUSION_RULES, add_fusion, capability_fusion, fuse_teachers, linear_fusion
from ov3dseg_core.models.teachers.simulated import (
    LSEG_LIKE, SEEM_LIKE, SimCaptioner, SimDenseTeacher, SimMaskTeacher, TeacherProfile,
)

__all__ = [
    "FUSION_RULES", "LSEG_LIKE", "SEEM_LIKE", "AlignedMaskTeacher", "Captioner", "DenseTeacher",
    "DiffusionSAMSynthesizer", "ImageSynthesizer", "MaskSet", "MaskTeacher", "SimCaptioner", "SimDenseTeacher",
    "SimMaskTeacher", "SimulatedSynthesizer", "TeacherProfile", "add_fusion", "aggregate_cross_attention",
    "binary_miou", "capability_fusion", "estimate_capability", "fuse_teachers", "linear_fusion", "paint_masks",
    "replace_noun",
]
