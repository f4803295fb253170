"""Token ids identical to open_clip's tokenizer (itself OpenAI's) on thousands of real and adversarial strings."""
from __future__ import annotations

import json
import random

import open_clip
import pytest
import torch

import clip_model
from clip_model.tokenizer import get_tokenizer
from datasets import DATA_DIR


def _corpus() -> list[str]:
    labels = DATA_DIR / "labels"
    texts: list[str] = []
    for name in ("ucf101", "hmdb51", "kinetics700", "kinetics400", "sthv2"):
        texts += (labels / f"{name}.txt").read_text().splitlines()
    for name in ("ucf101_clip", "kinetics700_clip"):
        prompts = json.loads((DATA_DIR / "prompts" / f"{name}.json").read_text())
        templates = prompts["templates"]
        texts += [templates[i % len(templates)].format(c) for i, c in enumerate(prompts["classes"])]
        texts += templates
    texts += [
        "Crème brûlée à la façon de Noël", "naïve café résumé", "São Paulo — Zürich", "ﬁancé’s “quotes”",
        "😀 dancing 💃🕺 at a party 🎉", "🏄‍♂️ surfing", "日本語のテキスト", "中文 打篮球", "한국어 축구", "Ελληνικά", "русский текст",
        "a&amp;b &lt;tag&gt;", "  lots \t of\n whitespace   ", "UPPER lower MiXeD", "it's they're we've I'm you'll he'd",
        "numbers 1234567 3.14 1e10", "punctuation!!! ??? ... ---", "", " ",
        "Ç̈ combining marks", "tab\tand\rreturn", "\u200bzero width", "emoji sequence 👨‍👩‍👧‍👦",
    ]
    rng = random.Random(0)
    words = [w for t in texts for w in t.split()]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(40, 120))) for _ in range(60)]  # too long
    return texts


CORPUS = _corpus()


def test_ids_match_open_clip():
    ref = open_clip.get_tokenizer("ViT-B-32")
    ours = clip_model.tokenize(CORPUS, truncate=True)
    theirs = ref(CORPUS)
    mismatched = [CORPUS[i] for i in range(len(CORPUS)) if not torch.equal(ours[i], theirs[i])]
    assert not mismatched, mismatched[:5]


def test_special_tokens_and_shape():
    tokens = clip_model.tokenize(["a dog", "a cat"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    tok = get_tokenizer()
    assert (tok.sot_token, tok.eot_token, tok.vocab_size) == (49406, 49407, 49408)
    assert tokens[0, 0] == 49406 and tokens[0, 3] == 49407 and tokens[0, 4:].eq(0).all()


def test_too_long_raises_unless_truncate():
    long = "word " * 100
    with pytest.raises(ValueError, match="over the context length 77.*truncate=True"):
        clip_model.tokenize(["short", long])
    t = clip_model.tokenize(long, truncate=True)[0]
    assert t[-1] == 49407 and t[0] == 49406 and (t != 0).all()


def test_decode_round_trips_clean_text():
    tok = get_tokenizer()
    assert tok.decode(tok.encode("Someone is Playing the Violin!")) == "someone is playing the violin !"


def test_text_cannot_inject_special_tokens():
    t = clip_model.tokenize("<|startoftext|> a <|endoftext|> b <start_of_text>")[0]
    assert t[0] == 49406 and (t[1:] != 49406).all()
    assert (t == 49407).sum() == 1 and t[t.argmax()] == 49407 and t[t.argmax() - 1] != 0
