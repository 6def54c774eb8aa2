"""The text-encoder interface and an LRU embedding cache in front of any encoder."""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Sequence

import torch


class TextEncoder(ABC):
    """Maps texts to L2-normalised embeddings in a joint text(-image) space.

    Implementations set ``name`` (identifies model and weights; cache key) and ``dim`` (embedding size D).
    """

    name: str
    dim: int

    @abstractmethod
    def _encode(self, texts: list[str]) -> torch.Tensor:
        """(N, D) embeddings of a non-empty list of strings."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) float32 L2-normalised embeddings, one row per text, on the encoder's device."""
        texts = check_texts(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.nn.functional.normalize(self._encode(texts).float(), dim=-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list; TypeError for a bare string or non-string items."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("encode() takes a list of strings, got a single string; wrap it in a list")
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"encode() takes strings only, got {sorted(set(bad))}")
    return texts


class CachedTextEncoder(TextEncoder):
    """LRU cache of embeddings keyed by (encoder.name, text), in front of ``encoder``; thread-safe.

    Misses of one call are encoded together in one batch; ``hits``/``misses`` count per text.
    """

    def __init__(self, encoder: TextEncoder, max_entries: int = 4096) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be > 0, got {max_entries}")
        self.encoder = encoder
        self.name = encoder.name
        self.dim = encoder.dim
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        texts = check_texts(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if (self.name, t) not in self._entries))
            if missing:
                for text, row in zip(missing, self.encoder.encode(missing)):
                    self._entries[(self.name, text)] = row.clone()  # not a view pinning the whole batch
            self.misses += len(missing)
            self.hits += len(texts) - len(missing)
            rows = []
            for text in texts:
                self._entries.move_to_end((self.name, text))
                rows.append(self._entries[(self.name, text)])
            out = torch.stack(rows)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return out

    def _encode(self, texts: list[str]) -> torch.Tensor:
        return self.encoder.encode(texts)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
