"""Sparse 3D backbones (spconv), registered in REGISTRY group "backbone".

``SpUNet-v1m1`` (generic widths/depths), the presets ``SpUNet14A``, ``SpUNet18A``, ``SpUNet34C``, and the PPT
variant ``SpUNet-v1m3`` with Mosaic3D's encoder ``Mosaic3D-SpUNet34C``; see ``spunet.py`` for the layout and
``checkpoint.py`` for loading Pointcept/Mosaic3D weights.
"""
from ov3dseg_core.models.backbones.checkpoint import (
    CheckpointError,
    CheckpointReport,
    load_pointcept_checkpoint,
    read_state_dict,
)
from ov3dseg_core.models.backbones.spunet import (
    MOSAIC3D_CONDITIONS,
    SPUNET_PRESETS,
    BasicBlock,
    Mosaic3DSpUNet34C,
    PDBatchNorm,
    SpUNet,
    SpUNet14A,
    SpUNet18A,
    SpUNet34C,
    SpUNetPDNorm,
    batch_mean,
    offset_to_batch,
)

__all__ = [
    "MOSAIC3D_CONDITIONS", "SPUNET_PRESETS", "BasicBlock", "CheckpointError", "CheckpointReport",
    "Mosaic3DSpUNet34C", "PDBatchNorm", "SpUNet", "SpUNet14A", "SpUNet18A", "SpUNet34C", "SpUNetPDNorm",
    "batch_mean", "load_pointcept_checkpoint", "offset_to_batch", "read_state_dict",
]
