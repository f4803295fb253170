"""SigLIP's text input from a SentencePiece model: ids padded to the model's full context (it pools the last position).

- ``siglip`` (v1: the T5 c4_en vocabulary, ``spiece.model``): lowercase, delete ASCII punctuation, collapse
  whitespace (big_vision's zero-shot ``canonicalize_text``, as transformers' ``SiglipTokenizer`` does), encode,
  append ``</s>`` (id 1) and pad with id 1;
- ``siglip2`` (Gemma's vocabulary, ``tokenizer.model``): lowercase (the model was trained on lowercased text;
  transformers' GemmaTokenizer leaves case alone, so callers of it lowercase first), encode, append ``<eos>`` (id 1)
  and pad with ``<pad>`` (id 0); no ``<bos>``.

Text longer than the context keeps its first ``context - 1`` pieces and still ends in the end token.

Why the ``sentencepiece`` library rather than Hugging Face ``tokenizers``: both SigLIP vocabularies ship as
SentencePiece model files (v1 has no tokenizer.json and transformers has no fast SigLIP tokenizer), the v1
canonicalisation is Python-side anyway, and the library is one small wheel that reads both files.
"""
from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import CheckpointError, UserError

VARIANTS = {"siglip": (1, 1), "siglip2": (1, 0)}  # variant -> (end id, pad id)
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str) -> str:
    """big_vision's zero-shot text canonicalisation: lowercase, no ASCII punctuation, single spaces, stripped."""
    return re.sub(r"\s+", " ", text.lower().translate(_PUNCTUATION)).strip()


class SentencePieceTokenizer:
    def __init__(self, model_file: str | Path | bytes, variant: str = "siglip", context_length: int = 64):
        """``model_file``: a SentencePiece model file, or such a model serialized (as a checkpoint keeps it)."""
        if variant not in VARIANTS:
            raise UserError(f"tokenizer variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        try:
            import sentencepiece
        except ImportError:
            raise ImportError("SigLIP's tokenizer needs sentencepiece: pip install sentencepiece") from None
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_file) if isinstance(model_file, bytes) \
                else sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as e:
            where = "the checkpoint's tokenizer" if isinstance(model_file, bytes) else model_file
            raise CheckpointError(f"{where}: not a SentencePiece model ({' '.join(str(e).split())})") from None
        self.variant, self.context_length = variant, context_length
        self.end_id, self.pad_id = VARIANTS[variant]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:  # -> (K, context_length) int64
        texts = [texts] if isinstance(texts, str) else list(texts)
        prepared = [canonicalize(t) if self.variant == "siglip" else t.lower() for t in texts]
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(self.sp.encode(prepared)):
            ids = ids[: self.context_length - 1] + [self.end_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
