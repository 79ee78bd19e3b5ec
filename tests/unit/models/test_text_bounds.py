"""Bounded text work, decided before the work: every tokenizer sees only what it can use of a
text (clipfleet.models.text_bounds), each request's texts are tokenized once and usage is
counted from that, and open_clip's BPE cache stays bounded."""

from __future__ import annotations

import random
import re
import string

import open_clip
import pytest

from clipfleet.models import text_bounds
from clipfleet.models.text_bounds import max_run_chars, max_text_chars, usable_text
from tests.support.local_dag import build_local_service

CONTEXT = 77
REALISTIC = [
    "a photo of a cat",
    "A red 1967 Ford Mustang parked on a cobblestone street in Lisbon, late afternoon light.",
    "https://example.com/images/2024/summer-collection/linen-shirt-blue.jpg on a white table",
    "Die Donaudampfschifffahrtsgesellschaft fährt um 9:40 Uhr ab.",
    "東京の夜景、雨の中を歩く人々。",
    "  leading and   repeated   whitespace\tand a tab  ",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 21),  # 923 characters
]


def letters(count: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(count))


def longest_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"[^\W\d_]+|(?:[^\w\s]|_)+", text)), default=0)


@pytest.mark.parametrize("text", REALISTIC)
def test_texts_within_the_bounds_pass_unchanged(text):
    assert usable_text(text, CONTEXT) == text


def test_a_word_longer_than_half_the_context_keeps_its_start():
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"  # 45 letters
    assert usable_text(f"a {word} case", CONTEXT) == f"a {word[:38]} case"


def test_a_cut_long_text_gives_the_tokenizer_the_same_context():
    tokenizer = open_clip.SimpleTokenizer()
    prose = " ".join(["a photograph of an extraordinary international celebration"] * 20)
    cut = usable_text(prose, CONTEXT)
    assert len(cut) == max_text_chars(CONTEXT) < len(prose)
    assert (tokenizer([cut]) == tokenizer([prose])).all()  # the first 77 tokens are the same


@pytest.mark.parametrize(
    "hostile",
    [
        letters(1000, 1),
        " ".join(letters(1000, seed) for seed in range(100)),
        "!" * 5000,
        "_" * 5000,
        " " * 90_000 + letters(5000, 2),
        "a" + "\u0301" * 5000,  # one letter and 5,000 combining accents
    ],
)
def test_hostile_texts_are_cut_to_what_a_context_can_use(hostile):
    cut = usable_text(hostile, CONTEXT)
    assert len(cut) <= max_text_chars(CONTEXT)
    assert longest_run(cut) <= max_run_chars(CONTEXT)


class TokenizerSpy:
    """Records the texts each tokenizer call is given; everything else is the tokenizer's."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    def __call__(self, texts, *args, **kwargs):
        self.calls.append(list(texts))
        return self.inner(texts, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.fixture
def spied(tiny_args, client_for, monkeypatch):
    """(client, {profile: spy on its CLIP's tokenizer}, {profile: its CLIP model}) over a fresh
    local service."""
    service = build_local_service(tiny_args)
    spies, models = {}, {}
    for name, profile in service.profiles.items():
        models[name] = profile.clip["stable"]._target.model
        spies[name] = TokenizerSpy(models[name]._tokenizer)
        monkeypatch.setattr(models[name], "_tokenizer", spies[name])
    return client_for(service), spies, models


@pytest.mark.parametrize("profile", ["fast", "accurate"])  # open_clip, transformers
def test_tokenizers_only_see_bounded_text(spied, profile):
    client, spies, _ = spied
    texts = [letters(1000, seed) for seed in range(8)]  # distinct: no cache, no BPE memo
    response = client.post("/v1/embed/text", json={"texts": texts, "profile": profile})
    assert response.status_code == 200, response.text
    seen = [text for call in spies[profile].calls for text in call]
    assert len(seen) == len(texts)
    assert all(len(text) <= max_text_chars(CONTEXT) for text in seen)
    assert all(longest_run(text) <= max_run_chars(CONTEXT) for text in seen)


@pytest.mark.parametrize("profile", ["fast", "accurate"])
def test_embeddings_tokenize_once_and_count_usage_from_it(spied, profile):
    client, spies, models = spied
    texts = ["a photo of a cat", "a dog", letters(300, 3)]
    response = client.post("/v1/embeddings", json={"model": profile, "input": texts})
    assert response.status_code == 200, response.text
    assert spies[profile].calls == [[usable_text(text, CONTEXT) for text in texts]]  # (was two)
    expected = sum(models[profile].count_tokens(texts))
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == expected == usage["total_tokens"]


def test_bpe_cache_is_bounded(monkeypatch):
    tokenizer = open_clip.SimpleTokenizer()
    specials = dict(tokenizer.cache)
    text_bounds.bound_bpe_cache(tokenizer)
    tokenizer.cache._max_entries = 50
    before = tokenizer(["<end_of_text> a cat"])
    for seed in range(200):
        tokenizer([letters(12, seed)])
    assert len(tokenizer.cache) <= 50 and specials.items() <= tokenizer.cache.items()
    assert (tokenizer(["<end_of_text> a cat"]) == before).all()


def test_the_prompt_budget_is_validated_and_defaults_to_the_largest_text_request():
    from pydantic import ValidationError

    from clipfleet.config import ApiLimits

    assert ApiLimits().prompt_char_budget == 65 * 1000
    assert ApiLimits(max_items=8, max_text_chars=100).prompt_char_budget == 900
    assert ApiLimits(max_prompt_chars=5000).prompt_char_budget == 5000
    with pytest.raises(ValidationError, match="at least max_text_chars"):
        ApiLimits(max_prompt_chars=999)


def test_batch_tag_jobs_render_prompts_within_the_same_limits(tiny_args):
    from clipfleet.batch.settings import SettingsError, tag_settings

    assert tag_settings(tiny_args, ("cat",), "a photo of a {label}", 5).labels == ("cat",)
    with pytest.raises(SettingsError, match="would be 1403 characters"):
        tag_settings(tiny_args, ("x" * 200,), "{label}" * 7 + "abc", 5)
    with pytest.raises(SettingsError, match="must contain"):
        tag_settings(tiny_args, ("cat",), "a photo", 5)
