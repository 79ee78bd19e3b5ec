"""The transformers backend's offline CLIP tokenizer is OpenAI CLIP's BPE: the same ids as
open_clip's tokenizer (under transformers 5 a tokenizer built from file paths knew two tokens
and gave every word one id)."""

from __future__ import annotations

import open_clip

from clipfleet.models.hf_clip_backend import openai_clip_tokenizer

TEXTS = ["a photo of a cat", "Zebras, on a RAINY day!", "naïve café 東京"]


def test_ids_match_open_clips_tokenizer():
    reference = open_clip.SimpleTokenizer()
    for text in TEXTS:
        expected = [id_ for id_ in reference([text])[0].tolist() if id_ != 0]
        assert openai_clip_tokenizer()(text)["input_ids"] == expected, text


def test_special_tokens_are_openais():
    tokenizer = openai_clip_tokenizer()
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407
    assert len(tokenizer) == 49408


def test_saved_tokenizer_reloads_with_the_same_ids(tmp_path):
    from transformers import AutoTokenizer

    openai_clip_tokenizer().save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(TEXTS[0])["input_ids"] == openai_clip_tokenizer()(TEXTS[0])["input_ids"]
