"""Text encoders from configs, cached by default."""
from __future__ import annotations

from typing import Any, Mapping

from ov3dseg_core.models.text import minilm, open_clip_encoder  # noqa: F401  (register "minilm", "open_clip")
from ov3dseg_core.models.text.base import CachedTextEncoder, TextEncoder
from ov3dseg_core.registry import REGISTRY


def build_text_encoder(cfg: Mapping[str, Any] | str, cache_entries: int = 4096) -> TextEncoder:
    """Encoder from ``{"type": "minilm" | "open_clip", **kwargs}`` (or just the type name).

    Wrapped in a CachedTextEncoder holding ``cache_entries`` embeddings; 0 returns the bare encoder.
    """
    encoder = REGISTRY.build("text_encoder", cfg)
    return CachedTextEncoder(encoder, cache_entries) if cache_entries > 0 else encoder
