"""Text encoders: offline MiniLM, open_clip (tiny config, local weights, cache-only tags), cache and prompts."""
from __future__ import annotations

import pytest
import torch

from ov3dseg_core.models.text import (
    TINY_CLIP,
    CachedTextEncoder,
    MiniLMEncoder,
    OpenClipTextEncoder,
    PretrainedWeightsError,
    TextEncoder,
    apply_template,
    build_text_encoder,
    encode_class_names,
    resolve_pretrained,
)


class CountingEncoder(TextEncoder):
    """Passes texts to a real encoder and records every batch it is asked for."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.calls: list[list[str]] = []

    def _encode(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def tiny_clip() -> OpenClipTextEncoder:
    torch.manual_seed(0)
    return OpenClipTextEncoder(TINY_CLIP)


def test_minilm_gives_sensible_normalised_384d_embeddings(minilm):
    emb = minilm.encode(["couch", "sofa", "toilet", "a chair in a scene"])
    assert emb.shape == (4, 384) and emb.dtype == torch.float32 and minilm.dim == 384
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # couch ~ sofa, not toilet
    assert not emb.is_inference()  # usable as classifier weights in a training graph


def test_cache_encodes_each_text_once(minilm):
    counting = CountingEncoder(minilm)
    cached = CachedTextEncoder(counting, max_entries=3)
    first = cached.encode(["chair", "table", "chair"])
    assert counting.calls == [["chair", "table"]]
    torch.testing.assert_close(first, minilm.encode(["chair", "table", "chair"]))
    again = cached.encode(["table", "chair"])
    assert len(counting.calls) == 1 and (cached.hits, cached.misses) == (3, 2)
    torch.testing.assert_close(again, first[[1, 0]])
    cached.encode(["lamp", "bed"])  # 4 entries > 3: the least recently used ("table") is evicted
    assert counting.calls[-1] == ["lamp", "bed"] and len(cached) == 3
    cached.encode(["table"])
    assert counting.calls[-1] == ["table"]


def test_tiny_open_clip_builds_and_encodes_offline(tiny_clip):
    emb = tiny_clip.encode(["a chair in a scene", "a sofa in a scene"])
    assert emb.shape == (2, 32) and tiny_clip.dim == 32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    with torch.no_grad():  # cross-check against open_clip's own text path
        direct = tiny_clip.model.encode_text(tiny_clip.tokenizer(["a chair in a scene"]), normalize=True)
    torch.testing.assert_close(emb[:1], direct)


def test_open_clip_loads_a_local_weights_file(tmp_path, tiny_clip):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    torch.manual_seed(123)  # a different random init, overwritten by the file
    loaded = OpenClipTextEncoder(TINY_CLIP, pretrained=path)
    texts = ["a bed", "a window"]
    torch.testing.assert_close(loaded.encode(texts), tiny_clip.encode(texts))
    assert loaded.name == f"open_clip:{TINY_CLIP}:tiny.pt"


def test_missing_pretrained_tag_raises_a_clear_error(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="pretrained=<path to the weights file>"):
        OpenClipTextEncoder("ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=tmp_path)
    with pytest.raises(PretrainedWeightsError, match="not a known tag"):
        OpenClipTextEncoder(TINY_CLIP, pretrained="no_such_tag", cache_dir=tmp_path)
    with pytest.raises(PretrainedWeightsError, match="hub cache"):
        OpenClipTextEncoder("hf-hub:UCSC-VLAA/ViT-L-16-HTxt-Recap-CLIP", cache_dir=tmp_path)


def test_pretrained_tag_resolves_to_the_hub_cache(tmp_path):
    # The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<revision>/<file>}.
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    found = resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert found == str(snapshot / "open_clip_model.safetensors")


def test_prompt_templates():
    assert apply_template(["chair", " shower curtain "]) == ["a chair in a scene", "a shower curtain in a scene"]
    assert apply_template(["bed"], "a photo of a {}.") == ["a photo of a bed."]
    with pytest.raises(ValueError, match="exactly one"):
        apply_template(["bed"], "a photo")
    with pytest.raises(ValueError, match="empty"):
        apply_template(["bed", "  "])
    with pytest.raises(TypeError, match="single string"):
        apply_template("bed")


def test_class_embeddings_average_the_templates(tiny_clip):
    templates = ("a {} in a scene", "a photo of a {}.")
    names = ["chair", "desk"]
    classes = encode_class_names(tiny_clip, names, templates)
    per_template = torch.stack([tiny_clip.encode(apply_template(names, t)) for t in templates])
    torch.testing.assert_close(classes, torch.nn.functional.normalize(per_template.mean(0), dim=-1))


def test_build_text_encoder_from_config(tiny_clip):
    cached = build_text_encoder({"type": "open_clip", "model_name": TINY_CLIP})
    assert isinstance(cached, CachedTextEncoder) and cached.dim == 32
    bare = build_text_encoder({"type": "open_clip", "model_name": TINY_CLIP, "text_only": True}, cache_entries=0)
    assert isinstance(bare, OpenClipTextEncoder) and isinstance(bare.model.visual, torch.nn.Identity)
    assert bare.encode([]).shape == (0, 32)
    with pytest.raises(TypeError, match="single string"):
        bare.encode("chair")
    with pytest.raises(KeyError, match="minilm"):
        build_text_encoder({"type": "bert"})
