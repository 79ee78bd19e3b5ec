"""The transformers backend's offline CLIP tokenizer leaves no temporary folder behind."""

from __future__ import annotations

import tempfile

from clipfleet.models.hf_clip_backend import openai_clip_tokenizer


def test_tokenizer_folder_is_removed_once_built(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tokenizer = openai_clip_tokenizer.__wrapped__()  # uncached: builds it here
    assert list(tmp_path.iterdir()) == []
    assert tokenizer("a cat")["input_ids"] == openai_clip_tokenizer()("a cat")["input_ids"]
    saved = tmp_path / "saved"
    tokenizer.save_pretrained(saved)  # still saveable without its source files
    assert (saved / "tokenizer.json").is_file()
