"""What the routes do, over deployment handles: profile routing, fan-out, error attribution.

Handles only need `.method.remote(...)` returning awaitables, so unit tests can pass fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipfleet.config import AppArgs, ClipModelSpec, ResNetSpec
from clipfleet.errors import ClipfleetError, InvalidRequestError, find_clipfleet_error
from clipfleet.fetch import ImageSource

READINESS_TIMEOUT_S = 5.0


def clip_model_label(spec: ClipModelSpec) -> str:
    return f"{spec.model}/{spec.pretrained}" if spec.pretrained else spec.model


def resnet_model_label(spec: ResNetSpec) -> str:
    return f"{spec.model}/{Path(spec.weights).name}"


@dataclass(frozen=True)
class Profile:
    name: str
    clip: Any  # DeploymentHandle of the profile's ClipEncoder
    resnet: Any  # DeploymentHandle of the profile's ResNetEncoder
    clip_label: str
    resnet_label: str


async def gather_items(responses: Sequence[Awaitable], field: str) -> list:
    """Await per-item responses; the first failure is re-raised naming its item (`images[2]`)."""
    results = await asyncio.gather(*responses, return_exceptions=True)
    for index, result in enumerate(results):
        if isinstance(result, BaseException):
            error = find_clipfleet_error(result)
            if error is not None:
                raise error.at_param(f"{field}[{index}]") from result
            raise result
    return results


def render_prompt(template: str, label: str) -> str:
    return template.replace("{label}", label)


class ClipfleetService:
    def __init__(
        self,
        args: AppArgs,
        fetcher: Any,
        scorer: Any,
        clip_encoders: dict[str, Any],
        resnet_encoders: dict[str, Any],
    ) -> None:
        self.args = args
        self.fetcher = fetcher
        self.scorer = scorer
        self.profiles = {
            name: Profile(
                name=name,
                clip=clip_encoders[name],
                resnet=resnet_encoders[name],
                clip_label=clip_model_label(spec.clip),
                resnet_label=resnet_model_label(spec.resnet),
            )
            for name, spec in args.profiles.items()
        }
        self._descriptions: dict[str, dict] = {}

    # -- validation -------------------------------------------------------------------------
    def profile(self, name: str | None) -> Profile:
        name = name or self.args.default_profile
        if name not in self.profiles:
            raise InvalidRequestError(
                f"unknown profile {name!r}; choose one of {sorted(self.profiles)}",
                "profile",
                status=422,
            )
        return self.profiles[name]

    def check_count(self, count: int, field: str) -> None:
        if count > self.args.limits.max_items:
            raise InvalidRequestError(
                f"{count} {field} in one request; the limit is {self.args.limits.max_items}",
                field,
                status=413,
            )

    def check_texts(self, texts: Sequence[str], field: str) -> None:
        limit = self.args.limits.max_text_chars
        for index, text in enumerate(texts):
            if len(text) > limit:
                raise InvalidRequestError(
                    f"text is {len(text)} characters; the limit is {limit}",
                    f"{field}[{index}]",
                    status=422,
                )

    def _fetch(self, source: ImageSource):
        return self.fetcher.fetch.remote(source)

    # -- operations -------------------------------------------------------------------------
    async def embed_images(
        self, sources: Sequence[ImageSource], encoder: str, profile_name: str | None
    ) -> dict:
        profile = self.profile(profile_name)
        self.check_count(len(sources), "images")
        handle = profile.clip if encoder == "clip" else profile.resnet
        responses = [handle.embed_image.remote(self._fetch(source)) for source in sources]
        vectors = await gather_items(responses, "images")
        label = profile.clip_label if encoder == "clip" else profile.resnet_label
        return _embedding_body(vectors, encoder, profile.name, label)

    async def embed_texts(self, texts: Sequence[str], profile_name: str | None) -> dict:
        profile = self.profile(profile_name)
        self.check_count(len(texts), "texts")
        self.check_texts(texts, "texts")
        matrix = await profile.clip.embed_texts.remote(list(texts))
        return _embedding_body(list(matrix), "clip", profile.name, profile.clip_label)

    async def score(
        self, pairs: Sequence[tuple[ImageSource, str]], profile_name: str | None
    ) -> dict:
        profile = self.profile(profile_name)
        self.check_count(len(pairs), "pairs")
        self.check_texts([text for _, text in pairs], "pairs")
        responses = [
            self.scorer.score_pair.remote(
                profile.clip.embed_image.remote(self._fetch(source)),
                profile.clip.embed_text.remote(text),
            )
            for source, text in pairs
        ]
        results = await gather_items(responses, "pairs")
        return {"results": results, "profile": profile.name, "model": profile.clip_label}

    async def tag(
        self,
        source: ImageSource,
        labels: Sequence[str] | None,
        top_k: int,
        prompt_template: str | None,
        profile_name: str | None,
    ) -> dict:
        profile = self.profile(profile_name)
        labels = list(labels or self.args.default_labels)
        if len(labels) > self.args.limits.max_labels:
            raise InvalidRequestError(
                f"{len(labels)} labels; the limit is {self.args.limits.max_labels}",
                "labels",
                status=413,
            )
        template = prompt_template or self.args.prompt_template
        if "{label}" not in template:
            raise InvalidRequestError(
                "prompt_template must contain '{label}'", "prompt_template", status=422
            )
        prompts = [render_prompt(template, label) for label in labels]
        logit_scale = (await self.describe_clip(profile))["logit_scale"]
        try:
            tags = await self.scorer.tag.remote(
                profile.clip.embed_image.remote(self._fetch(source)),
                profile.clip.embed_texts.remote(prompts),
                labels,
                logit_scale,
                min(top_k, self.args.limits.max_top_k, len(labels)),
            )
        except Exception as exc:
            raise _attributed(exc, "image") from exc
        return {"tags": tags, "profile": profile.name, "model": profile.clip_label}

    # -- introspection ----------------------------------------------------------------------
    async def describe_clip(self, profile: Profile) -> dict:
        if profile.name not in self._descriptions:
            self._descriptions[profile.name] = await profile.clip.describe.remote()
        return self._descriptions[profile.name]

    async def models(self) -> dict:
        profiles = {}
        for name, profile in self.profiles.items():
            spec = self.args.profiles[name]
            clip_info, resnet_info = await asyncio.gather(
                self.describe_clip(profile), profile.resnet.describe.remote()
            )
            profiles[name] = {
                "clip": {**spec.clip.model_dump(), "label": profile.clip_label, **clip_info},
                "resnet": {
                    **spec.resnet.model_dump(),
                    "label": profile.resnet_label,
                    **resnet_info,
                },
            }
        return {
            "default_profile": self.args.default_profile,
            "random_weights": any(
                part["random_weights"] for entry in profiles.values() for part in entry.values()
            ),
            "profiles": profiles,
        }

    async def readiness(self) -> tuple[bool, dict]:
        """Ask every deployment to answer `describe` (encoders answer only after warm-up)."""
        checks: dict[str, Awaitable] = {
            "image_fetcher": self.fetcher.describe.remote(),
            "scorer": self.scorer.describe.remote(),
        }
        for name, profile in self.profiles.items():
            checks[f"{name}.clip"] = profile.clip.describe.remote()
            checks[f"{name}.resnet"] = profile.resnet.describe.remote()
        answers = await asyncio.gather(
            *(asyncio.wait_for(_awaited(check), READINESS_TIMEOUT_S) for check in checks.values()),
            return_exceptions=True,
        )
        status = {}
        for key, answer in zip(checks, answers, strict=True):
            if isinstance(answer, BaseException):
                status[key] = {"ready": False, "reason": type(answer).__name__}
            else:
                status[key] = {"ready": True, **_summary(answer)}
        return all(entry["ready"] for entry in status.values()), status


async def _awaited(awaitable: Awaitable) -> Any:
    return await awaitable


def _summary(description: dict) -> dict:
    keys = ("model", "weights", "random_weights", "device")
    return {key: description[key] for key in keys if key in description}


def _attributed(exc: BaseException, param: str) -> BaseException:
    error = find_clipfleet_error(exc)
    return error.at_param(param) if error is not None else exc


def _embedding_body(vectors: list[np.ndarray], encoder: str, profile: str, model: str) -> dict:
    matrix = np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)
    return {
        "embeddings": matrix.tolist(),
        "dim": int(matrix.shape[1]),
        "encoder": encoder,
        "profile": profile,
        "model": model,
    }


__all__ = ["ClipfleetError", "ClipfleetService", "Profile", "gather_items"]
