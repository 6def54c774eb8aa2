"""Prompt templates for class names, and prompt-ensembled class embeddings."""
from __future__ import annotations

from typing import Sequence

import torch

from ov3dseg_core.models.text.base import TextEncoder, check_texts

DEFAULT_TEMPLATE = "a {} in a scene"

PROMPT_TEMPLATES: tuple[str, ...] = (
    "a {} in a scene",
    "a photo of a {}.",
    "there is a {} in the scene",
    "a {} in a room",
    "{}",
)
"""Templates for open-vocabulary class prompts; ``{}`` is replaced by the class name."""


def apply_template(names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """``template`` filled with each class name (stripped), e.g. "chair" -> "a chair in a scene"."""
    if template.count("{}") != 1:
        raise ValueError(f"template must contain exactly one '{{}}', got {template!r}")
    names = check_texts(names)
    empty = [i for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise ValueError(f"class names at positions {empty} are empty")
    return [template.replace("{}", n.strip()) for n in names]


def encode_class_names(
    encoder: TextEncoder, names: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,)
) -> torch.Tensor:
    """(C, D) L2-normalised class embeddings: the mean over ``templates`` of each name's prompt embedding."""
    if not templates:
        raise ValueError("need at least one template")
    names = check_texts(names)
    prompts = [p for t in templates for p in apply_template(names, t)]
    embeddings = encoder.encode(prompts).reshape(len(templates), len(names), -1)
    return torch.nn.functional.normalize(embeddings.mean(dim=0), dim=-1)
