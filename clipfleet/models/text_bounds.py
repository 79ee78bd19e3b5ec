"""What a text encoder can use of a text, cut before its tokenizer sees it.

Every tokenizer here reads the whole text before it truncates to the context (77 tokens for
CLIP, 64 for SigLIP), and open_clip's BPE is quadratic in the length of a run of letters: 64
distinct 1,000-letter words took 20 s of CPU. So a text is cut first, in proportion to the
context length:

- a run of letters (or of symbols) longer than half the context in characters (at least
  `MIN_RUN_CHARS`) is cut to that: 38 for CLIP, 32 for SigLIP. Hardly a word of any language is
  that long (the longest English one has 45 letters, and would lose its last 7); a random-letter
  run of that length already takes ~21 tokens, so 64 of them cost an encoder what 64 long
  captions do (a forward of 23 tokens each), not 20 s of BPE;
- the whole text to `TEXT_CHARS_PER_TOKEN` characters per token of context (924 for CLIP):
  English runs ~4 characters per token, and even prose of long words (7.5) gives its first 77
  tokens well within that.

A text within both bounds is passed on unchanged, character for character; one beyond them has
its whitespace collapsed too (every tokenizer here does that itself). Digits need no cut: each
is a token of its own or part of a short run.
"""

from __future__ import annotations

import functools
import re
from typing import Any

TEXT_CHARS_PER_TOKEN = 12
MIN_RUN_CHARS = 32
# open_clip's SimpleTokenizer caches the BPE of every distinct word it has seen, without bound:
# distinct words from clients grow it forever. Reset to its special tokens past this many.
BPE_CACHE_ENTRIES = 65_536


def max_run_chars(context_length: int) -> int:
    return max(MIN_RUN_CHARS, context_length // 2)


def max_text_chars(context_length: int) -> int:
    return TEXT_CHARS_PER_TOKEN * context_length


@functools.cache
def _long_run(limit: int) -> re.Pattern[str]:
    letters, symbols = r"[^\W\d_]", r"(?:[^\w\s]|_)"
    return re.compile(f"{letters}{{{limit + 1},}}|{symbols}{{{limit + 1},}}")


def usable_text(text: str, context_length: int) -> str:
    """`text` cut to what a tokenizer with `context_length` tokens can use (module docstring)."""
    run_limit, text_limit = max_run_chars(context_length), max_text_chars(context_length)
    long_run = _long_run(run_limit)
    if len(text) <= text_limit and long_run.search(text) is None:
        return text
    text = " ".join(text.split())
    return long_run.sub(lambda run: run.group()[:run_limit], text)[:text_limit]


def usable_texts(texts: list[str], context_length: int) -> list[str]:
    return [usable_text(text, context_length) for text in texts]


class BoundedBpeCache(dict):
    """open_clip's BPE cache, emptied back to its first entries (the special tokens) when it
    reaches `max_entries`."""

    def __init__(self, initial: dict[str, Any], max_entries: int = BPE_CACHE_ENTRIES) -> None:
        super().__init__(initial)
        self._initial = dict(initial)
        self._max_entries = max_entries

    def __setitem__(self, key: str, value: Any) -> None:
        if len(self) >= self._max_entries:
            self.clear()
            self.update(self._initial)
        super().__setitem__(key, value)


def bound_bpe_cache(tokenizer: Any) -> Any:
    """Give an open_clip SimpleTokenizer (or one wrapping it as `_base`) a bounded cache."""
    simple = getattr(tokenizer, "_base", tokenizer)
    cache = getattr(simple, "cache", None)
    if isinstance(cache, dict) and not isinstance(cache, BoundedBpeCache):
        simple.cache = BoundedBpeCache(cache)
    return tokenizer
