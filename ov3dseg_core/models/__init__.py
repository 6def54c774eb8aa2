"""Neural components: sparse 3D backbones, text encoders and the XMask3D branches.

Importing this package applies the CPU-compatibility fixes (``ov3dseg_core.compat``) before any submodule imports
open_clip, diffusers, transformers, sentence_transformers or spconv; it imports nothing heavy itself.
"""
from ov3dseg_core import compat

compat.apply()
