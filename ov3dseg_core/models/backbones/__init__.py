"""Sparse 3D backbones (spconv), registered in REGISTRY group "backbone".

``SpUNet-v1m1`` (generic widths/depths), the presets ``SpUNet14A``, ``SpUNet18A``, ``SpUNet34C``, and the PPT
variant ``SpUNet-v1m3`` with Mosaic3D's encoder ``Mosaic3D-SpUNet34C``; see ``spunet.py`` for the layout and
``checkpoint.py`` for loading Pointcept/Mosaic3D weights. ``MinkUNet`` (presets ``MinkUNet14A``, ``MinkUNet18A``,
``MinkUNet34C``) is MinkowskiEngine's layout, XMask3D's 3D networks (``minkunet.py``); ``convert.py`` rewrites
released XMask3D and Mosaic3D checkpoints for these modules (``layouts.py``: the weight layouts involved).
"""
from ov3dseg_core.models.backbones.checkpoint import (
    CheckpointError,
    CheckpointReport,
    load_pointcept_checkpoint,
    load_pointcept_state,
    read_checkpoint,
    read_state_dict,
)
from ov3dseg_core.models.backbones.convert import (
    CONVERTED_FORMAT,
    CONVERTERS,
    ConversionReport,
    ConvertedWeights,
    convert_mosaic3d,
    convert_xmask3d,
    load_converted,
    load_converted_state,
    save_converted,
)
from ov3dseg_core.models.backbones.minkunet import MinkUNet, MinkUNet14A, MinkUNet18A, MinkUNet34C
from ov3dseg_core.models.backbones.spunet import (
    MOSAIC3D_CONDITION_SETS,
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
    "CONVERTED_FORMAT", "CONVERTERS", "MOSAIC3D_CONDITIONS", "MOSAIC3D_CONDITION_SETS", "SPUNET_PRESETS",
    "BasicBlock", "CheckpointError", "CheckpointReport", "ConversionReport", "ConvertedWeights", "MinkUNet",
    "MinkUNet14A", "MinkUNet18A", "MinkUNet34C", "Mosaic3DSpUNet34C", "PDBatchNorm", "SpUNet", "SpUNet14A",
    "SpUNet18A", "SpUNet34C", "SpUNetPDNorm", "batch_mean", "convert_mosaic3d", "convert_xmask3d",
    "load_converted", "load_converted_state", "load_pointcept_checkpoint", "load_pointcept_state", "offset_to_batch",
    "read_checkpoint", "read_state_dict", "save_converted",
]
