"""Text encoders behind one interface (REGISTRY group "text_encoder"), an embedding cache and prompt templates.

    encoder = build_text_encoder({"type": "minilm"})                      # offline, 384-d
    encoder = build_text_encoder({"type": "open_clip", "model_name": "ViT-L-14", "pretrained": "/path/w.safetensors"})
    text = encoder.encode(apply_template(["chair", "sofa"]))              # (2, D) float32, L2-normalised
"""
from ov3dseg_core.models.text.base import CachedTextEncoder, TextEncoder
from ov3dseg_core.models.text.build import build_text_encoder
from ov3dseg_core.models.text.minilm import MiniLMEncoder, bundled_minilm_path
from ov3dseg_core.models.text.open_clip_encoder import (
    OPEN_CLIP_CONFIG_DIR,
    TINY_CLIP,
    OpenClipTextEncoder,
    PretrainedWeightsError,
    register_open_clip_configs,
    resolve_pretrained,
)
from ov3dseg_core.models.text.prompts import DEFAULT_TEMPLATE, PROMPT_TEMPLATES, apply_template, encode_class_names

__all__ = [
    "DEFAULT_TEMPLATE", "OPEN_CLIP_CONFIG_DIR", "PROMPT_TEMPLATES", "TINY_CLIP", "CachedTextEncoder", "MiniLMEncoder",
    "OpenClipTextEncoder", "PretrainedWeightsError", "TextEncoder", "apply_template", "build_text_encoder",
    "bundled_minilm_path", "encode_class_names", "register_open_clip_configs", "resolve_pretrained",
]
