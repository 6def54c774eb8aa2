"""open_clip text tower as a TextEncoder; weights only from local files or the user's hub cache, never downloaded.

``pretrained`` may be
- None: random weights (tests, parameter counts);
- a local ``.pt``/``.bin``/``.safetensors`` file;
- an open_clip tag such as ``laion2b_s34b_b79k``: used only if the file open_clip would download for it is already
  in ``cache_dir`` (default: the Hugging Face hub cache for hub-hosted tags, ``~/.cache/clip`` for URL tags).
``model_name`` may also be ``hf-hub:org/repo`` (a snapshot already in the hub cache) or ``local-dir:/path``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ov3dseg_core import compat
from ov3dseg_core.models.text.base import TextEncoder
from ov3dseg_core.registry import REGISTRY

OPEN_CLIP_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "open_clip"
"""open_clip model configs shipped with ov3dseg (tiny test models); see register_open_clip_configs."""

TINY_CLIP = "ov3dseg-tiny-clip"
"""A 2-layer, 32-d CLIP (text and 32x32-pixel vision towers) for tests."""


class PretrainedWeightsError(FileNotFoundError):
    """open_clip weights that are neither a local file nor already in the cache."""


def register_open_clip_configs() -> None:
    """Make the JSON model configs under ov3dseg_core/configs/open_clip/ known to open_clip (idempotent)."""
    compat.apply()
    import open_clip

    missing = {p.stem for p in OPEN_CLIP_CONFIG_DIR.glob("*.json")} - set(open_clip.list_models())
    if missing:
        open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)


def resolve_pretrained(model_name: str, pretrained: str, cache_dir: str | None = None) -> str:
    """Local weights file for ``pretrained`` (a path or an open_clip tag found in the cache), never downloading.

    Raises PretrainedWeightsError saying where the file was looked for and how to provide it.
    """
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if os.path.isfile(pretrained):
        return pretrained
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        raise PretrainedWeightsError(
            f"open_clip weights {pretrained!r} for {model_name!r}: no such file and not a known tag "
            f"(known tags: {open_clip.list_pretrained_tags_by_model(model_name) or 'none'})"
        )
    how = (
        f"pass pretrained=<path to the weights file>, or put the file in the cache first, e.g. "
        f"`python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{pretrained}'"
        f"{', cache_dir=' + repr(cache_dir) if cache_dir else ''})\"` on a machine with internet"
    )
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(cfg["hf_hub"])
        candidates = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME] if not filename else [filename]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for name in candidates:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
        where = f"the Hugging Face hub cache ({cache_dir or 'default location'}) as {repo_id}/{' or '.join(candidates)}"
    else:
        folder = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "clip"
        path = folder / os.path.basename(cfg["url"])
        if path.is_file():
            return str(path)
        where = str(path)
    raise PretrainedWeightsError(f"open_clip weights {model_name}/{pretrained} are not in {where}; {how}")


def _resolve_model_name(model_name: str, cache_dir: str | None) -> str:
    """``hf-hub:org/repo`` -> ``local-dir:<cached snapshot>`` so that open_clip reads the cache only."""
    if not model_name.startswith("hf-hub:"):
        return model_name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = model_name[len("hf-hub:"):]
    try:
        return "local-dir:" + snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError as exc:
        raise PretrainedWeightsError(
            f"{model_name} is not in the Hugging Face hub cache ({cache_dir or 'default location'}); download it "
            f"first (`huggingface-cli download {repo_id}`) or use model_name='local-dir:<folder>'"
        ) from exc


@REGISTRY.register("text_encoder", "open_clip")
class OpenClipTextEncoder(TextEncoder):
    """CLIP text tower from open_clip.

    Args:
        model_name: an open_clip architecture (``ViT-B-32``, ``ViT-L-14``, ``ov3dseg-tiny-clip``...),
            ``hf-hub:org/repo`` or ``local-dir:/path``.
        pretrained: None (random), a local weights file, or a tag already in the cache (see module docstring).
        cache_dir: hub / download cache to look in (default: the standard locations).
        device: torch device for the model and the returned embeddings.
        text_only: drop the image tower after loading (saves e.g. 1.2 GB for ViT-L-14).

    ``model`` (the CLIP model, image tower included unless text_only), ``tokenizer`` and ``preprocess``
    (evaluation image transform) are public for components that need the image side too.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        device: str = "cpu",
        text_only: bool = False,
    ) -> None:
        register_open_clip_configs()
        import open_clip

        cache_dir = str(cache_dir) if cache_dir is not None else None
        resolved_name = _resolve_model_name(model_name, cache_dir)
        weights = None
        if pretrained is not None and not resolved_name.startswith("local-dir:"):
            weights = resolve_pretrained(resolved_name, str(pretrained), cache_dir)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            resolved_name, pretrained=weights, device=device, cache_dir=cache_dir
        )
        self.model.eval()
        if text_only:
            self.model.visual = torch.nn.Identity()
        self.tokenizer = open_clip.get_tokenizer(resolved_name, cache_dir=cache_dir)
        self.device = torch.device(device)
        tag = Path(str(pretrained)).name if pretrained is not None else "random"
        self.name = f"open_clip:{model_name}:{tag}"
        self.dim = int(self._encode([""]).shape[1])

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens)
