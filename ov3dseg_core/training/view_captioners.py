"""Real view captioners for XMask3D training, REGISTRY group ``view_captioner`` beside the simulated
``SimViewCaptioner`` (training/xmask3d.py); a training config selects one with ``views.captioner``::

    views: {captioner: {type: ViTGPT2Captioner, path: /models/vit-gpt2-image-captioning, device: cuda}}

``ViTGPT2Captioner`` runs a transformers ``VisionEncoderDecoderModel`` (ViT encoder + GPT-2 decoder, such as
nlpconnect/vit-gpt2-image-captioning, or any image-to-text model of that class) on the frame's colour image. Its
weights, tokenizer and image processor come from one local folder as ``save_pretrained`` writes them; nothing is
downloaded (``local_files_only``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ov3dseg_core import compat
from ov3dseg_core.registry import REGISTRY

MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json")
"""Weight files of a transformers model folder (one of them is needed)."""
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
"""Tokenizer files (one of them is needed: a fast tokenizer, or GPT-2's vocab.json + merges.txt)."""


def check_model_folder(root: Path) -> None:
    """FileNotFoundError naming what a captioner folder lacks: the folder, config.json, the weights, the
    tokenizer or the image processor (preprocessor_config.json)."""
    if not root.is_dir():
        raise FileNotFoundError(f"view captioner folder {root} does not exist (give views.captioner.path: a local "
                                "folder written by save_pretrained; nothing is downloaded)")
    needs = {"the model config": ("config.json",), "the model weights": MODEL_FILES,
             "the tokenizer": TOKENIZER_FILES, "the image processor": ("preprocessor_config.json",)}
    for what, names in needs.items():
        if not any((root / name).is_file() for name in names):
            raise FileNotFoundError(f"view captioner folder {root} lacks {what}: none of {', '.join(names)}")


@REGISTRY.register("view_captioner", "ViTGPT2Captioner")
class ViTGPT2Captioner:
    """A VisionEncoderDecoder image captioner from the local folder ``path`` (see the module docstring).

    max_length: most tokens of a caption; num_beams: beam search width (1 = greedy); device: torch device.
    The view-captioner interface: ``__call__(image (H, W, 3) uint8 RGB, objects, rng) -> str`` (``objects`` and
    ``rng`` are unused: the caption comes from the image alone); ``caption(images)`` captions a batch."""

    def __init__(self, path: str, max_length: int = 20, num_beams: int = 1, device: str = "cpu"):
        root = Path(path).expanduser()
        check_model_folder(root)
        compat.apply()  # before transformers imports torchvision (CPU torch)
        from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

        self.device = torch.device(device)
        self.model = VisionEncoderDecoderModel.from_pretrained(root, local_files_only=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
        self.processor = AutoImageProcessor.from_pretrained(root, local_files_only=True)
        self.generate_kwargs = {"max_length": max_length, "num_beams": num_beams}

    @torch.no_grad()
    def caption(self, images: Sequence[np.ndarray]) -> list[str]:
        """One caption per (H, W, 3) uint8 RGB image."""
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values.to(self.device)
        ids = self.model.generate(pixels, **self.generate_kwargs)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def __call__(self, image: np.ndarray, objects: Sequence[Any], rng: np.random.Generator) -> str:
        return self.caption([image])[0]
