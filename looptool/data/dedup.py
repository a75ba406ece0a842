"""Duplicate detection for generated samples: exact (normalised text) and near (MinHash LSH).

A sample's text for this purpose is its request (user turns, normalised), the names of the
offered tools, and its label; two
samples asking the same thing in almost the same words are duplicates even when a value differs
by a character. ``datasketch`` provides the MinHash and the LSH index.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec
from datasketch import MinHash, MinHashLSH

from looptool.data.samples import Sample

_WORD = re.compile(r"\w+")
_encoder = msgspec.json.Encoder(order="sorted")


def request_text(sample: Sample) -> str:
    """What the user asked: the user turns, joined."""
    return " ".join(m.content or "" for m in sample.messages if m.role == "user")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: the unit of every text comparison here and in lint."""
    return _WORD.findall(text.lower())


def sample_text(sample: Sample) -> str:
    tools = " ".join(sorted(t.function.name for t in sample.tools))
    return (
        " ".join(words(request_text(sample))) + " || " + tools + " || " + _encoder.encode(sample.label).decode().lower()
    )


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def exact_key(sample: Sample) -> str:
    return _key(sample_text(sample))


_permutations: dict[int, tuple[Any, Any]] = {}  # num_perm -> (permutations, scheme): costly to draw each time


def _minhash(text: str, num_perm: int) -> MinHash:
    words = text.split()
    shingles = {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))}
    if num_perm not in _permutations:
        template = MinHash(num_perm=num_perm, seed=1)
        _permutations[num_perm] = (template.permutations, template.scheme)
    permutations, scheme = _permutations[num_perm]
    minhash = MinHash(num_perm=num_perm, seed=1, permutations=permutations, scheme=scheme)
    minhash.update_batch([shingle.encode() for shingle in shingles])
    return minhash


class NearDuplicateIndex:
    """Remembers samples; ``is_duplicate`` is true for an exact or near (Jaccard >= threshold) repeat."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 64) -> None:
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.exact: set[str] = set()

    def __len__(self) -> int:
        return len(self.exact)

    def _find(self, text: str) -> tuple[bool, str, MinHash | None]:
        """(seen before, exact key, the MinHash when one was computed)."""
        key = _key(text)
        if key in self.exact:
            return True, key, None
        minhash = _minhash(text, self.num_perm)
        return bool(self.lsh.query(minhash)), key, minhash

    def _insert(self, key: str, minhash: MinHash) -> None:
        self.exact.add(key)
        self.lsh.insert(key, minhash)

    def is_duplicate(self, sample: Sample) -> bool:
        return self._find(sample_text(sample))[0]

    def seen_or_add(self, sample: Sample) -> bool:
        """``is_duplicate``, and remember the sample when it is not (one MinHash, not two)."""
        seen, key, minhash = self._find(sample_text(sample))
        if not seen and minhash is not None:
            self._insert(key, minhash)
        return seen

    def add(self, sample: Sample) -> None:
        text = sample_text(sample)
        key = _key(text)
        if key not in self.exact:
            self._insert(key, _minhash(text, self.num_perm))
