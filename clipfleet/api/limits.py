"""The API's request limits (`limits:` of serve_config.yaml's args) and the checks of the text a
request asks the text encoders to read, made in the ingress before any work is sent.

Every route's texts go through `check_texts` (each text, then all of them against one budget),
and /v1/tag's prompts through `render_prompts`, which measures each rendered prompt before
rendering it: a 500-character template of `{label}` x 71 no longer turns 52 KB of JSON into
3.6 MB of prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clipfleet.errors import InvalidRequestError, PayloadTooLargeError

LABEL_SLOT = "{label}"


class ApiLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_items: int = Field(64, ge=1, le=4096)
    max_text_chars: int = Field(1000, ge=1, le=100_000)
    # Characters of text one request may send the text encoders, every text together (texts,
    # score pairs' texts, rendered tag prompts, rerank queries and documents): 413 past it.
    # Unset: (max_items + 1) x max_text_chars, the largest request a route takes (max_items
    # texts, and a rerank or score query beside them).
    max_prompt_chars: int | None = Field(None, ge=1, le=10_000_000)
    max_labels: int = Field(256, ge=1, le=10_000)
    max_top_k: int = Field(50, ge=1)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Whole-request deadline in the ingress (504 after it); keep it below the proxy's
    # http_options.request_timeout_s so clients get the JSON envelope, not the proxy's 408.
    request_timeout_s: float = Field(30.0, gt=0, le=600)
    # Overload: a work request expected to wait longer than this (from this ingress replica's
    # measured latency and concurrency) is refused at once with 503 + Retry-After. Unset: a
    # quarter of request_timeout_s. About 2 x the p99 at capacity keeps the admitted requests'
    # p99 within 3 x it (measure with loadtests/overload.py).
    shed_wait_s: float | None = Field(None, gt=0, le=600)
    # Bulk requests are shed past this fraction of that wait: under overload, bulk goes first.
    bulk_shed_ratio: float = Field(0.5, gt=0, le=1)
    # Bulk requests running at once in each ingress replica; a bulk request over it waits for
    # one to finish, up to the bulk shed wait (shed_wait_s x bulk_shed_ratio), then gets 503 +
    # Retry-After (`X-Clipfleet-Shed: bulk`). Interactive requests never wait on it. Null: no cap.
    bulk_in_flight: int | None = Field(4, ge=1, le=100_000)

    @model_validator(mode="after")
    def _budget_holds_a_text(self) -> ApiLimits:
        if self.max_prompt_chars is not None and self.max_prompt_chars < self.max_text_chars:
            raise ValueError("max_prompt_chars must be at least max_text_chars")
        return self

    @property
    def admission_wait_s(self) -> float:
        return self.shed_wait_s or self.request_timeout_s / 4

    @property
    def bulk_wait_s(self) -> float:
        return self.admission_wait_s * self.bulk_shed_ratio

    @property
    def prompt_char_budget(self) -> int:
        return self.max_prompt_chars or (self.max_items + 1) * self.max_text_chars


def check_count(count: int, field: str, limits: ApiLimits) -> None:
    if count > limits.max_items:
        raise PayloadTooLargeError(
            f"{count} {field} in one request; the limit is {limits.max_items}", field
        )


def check_texts(texts: Sequence[str], field: str, limits: ApiLimits) -> None:
    """Each text within max_text_chars (422 at `field[i]`), all within the budget (413)."""
    for index, text in enumerate(texts):
        check_length(text, f"{field}[{index}]", limits)
    check_budget(sum(map(len, texts)), field, limits)


def check_text(text: str, param: str, limits: ApiLimits) -> None:
    """One text of its own request field `param`: within max_text_chars and the budget."""
    check_length(text, param, limits)
    check_budget(len(text), param, limits)


def check_length(text: str, param: str, limits: ApiLimits) -> None:
    if len(text) > limits.max_text_chars:
        raise InvalidRequestError(
            f"text is {len(text)} characters; the limit is {limits.max_text_chars}",
            param,
            status=422,
        )


def check_budget(chars: int, field: str, limits: ApiLimits) -> None:
    if chars > limits.prompt_char_budget:
        raise PayloadTooLargeError(
            f"the request's texts are {chars} characters together; the limit is "
            f"{limits.prompt_char_budget} (limits.max_prompt_chars)",
            field,
        )


def render_prompt(template: str, label: str) -> str:
    return template.replace(LABEL_SLOT, label)


def render_prompts(template: str, labels: Sequence[str], limits: ApiLimits) -> list[str]:
    """`template` rendered for each label, each prompt's length and their sum checked first
    (from the template's slots and the labels' lengths: nothing is rendered to be refused)."""
    slots = template.count(LABEL_SLOT)
    if not slots:
        raise InvalidRequestError(
            f"prompt_template must contain '{LABEL_SLOT}'", "prompt_template", status=422
        )
    fixed = len(template) - slots * len(LABEL_SLOT)
    lengths = [fixed + slots * len(label) for label in labels]
    for index, length in enumerate(lengths):
        if length > limits.max_text_chars:
            raise InvalidRequestError(
                f"the prompt for labels[{index}] (prompt_template with the label) would be "
                f"{length} characters; the limit is {limits.max_text_chars}",
                "prompt_template",
                status=422,
            )
    check_budget(sum(lengths), "labels", limits)
    return [render_prompt(template, label) for label in labels]
