"""SELFIES token vocabulary: special tokens first, then the sorted alphabet.

The vocabulary is stored inside every model file as a plain list, so a model can
be decoded in any process (the selfies repo's VAE example builds it from a set
and never saves it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .errors import VocabularyError

__all__ = ["Vocabulary", "PAD", "BOS", "EOS", "UNK", "SPECIAL_TOKENS", "parent_token"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)


class Vocabulary:
    """Bidirectional map between SELFIES tokens and integer ids.

    Ids 0..3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``; the rest are the
    SELFIES tokens in sorted order, so the same alphabet always gives the same ids.
    """

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, tokens: Iterable[str]):
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise VocabularyError(f"vocabulary must start with {list(SPECIAL_TOKENS)}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            raise VocabularyError("vocabulary has duplicate tokens")
        self.tokens: list[str] = tokens
        self.index: dict[str, int] = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, token_sequences: Iterable[Sequence[str]]) -> Vocabulary:
        """Vocabulary of every token seen in ``token_sequences``."""
        alphabet: set[str] = set()
        for seq in token_sequences:
            alphabet.update(seq)
        alphabet -= set(SPECIAL_TOKENS)
        return cls([*SPECIAL_TOKENS, *sorted(alphabet)])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """Tokens of ``tokens`` that are not in this vocabulary, in order of first appearance."""
        seen: dict[str, None] = {}
        for t in tokens:
            if t not in self.index:
                seen.setdefault(t)
        return list(seen)

    def encode(self, tokens: Sequence[str], *, strict: bool = True) -> list[int]:
        """Token ids of ``tokens`` (no ``<bos>``/``<eos>``).

        Raises:
            VocabularyError: if ``strict`` and a token is unknown (else it maps to ``<unk>``).
        """
        if strict:
            missing = self.unknown(tokens)
            if missing:
                raise VocabularyError(f"tokens not in the model's vocabulary: {' '.join(missing[:5])}")
        return [self.index.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``, stopping at ``<eos>`` and skipping ``<pad>``/``<bos>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id, self.unk_id):
                continue
            out.append(self.tokens[i])
        return out

    def decode_selfies(self, ids: Iterable[int]) -> str:
        """SELFIES string of ``ids`` (see :meth:`decode`)."""
        return "".join(self.decode(ids))

    def to_list(self) -> list[str]:
        """The tokens as a plain list (what the model file stores)."""
        return list(self.tokens)

    @classmethod
    def from_list(cls, tokens: Sequence[str]) -> Vocabulary:
        """Inverse of :meth:`to_list`."""
        if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
            raise VocabularyError("stored vocabulary is not a list of strings")
        return cls(tokens)


_CHARGE = re.compile(r"[+-]\d*(?=\]$)")
_HYDROGENS = re.compile(r"H\d*(?=[+-]|\]$)")


def parent_token(token: str, known: Vocabulary) -> str | None:
    """The token of ``known`` closest to a SELFIES ``token`` it lacks: the same atom without its stereo
    marks (``[C@@H1]`` -> ``[CH1]``, ``[/C]`` -> ``[C]``), then without its charge (``[N+1]`` -> ``[N]``),
    then without explicit hydrogens (``[NH3+1]`` -> ``[N]``); ``None`` when none of these is known.

    Used to start a new token's embedding and output row from a related one (:meth:`MolVAE.with_tokens`).
    """
    steps = [token.replace("@", "").replace("/", "").replace("\\", "")]
    steps.append(_CHARGE.sub("", steps[-1]))
    steps.append(_HYDROGENS.sub("", steps[-1]))
    for candidate in steps:
        if candidate != token and candidate in known:
            return candidate
    return None
