"""What the routes do, over deployment handles: profile and variant routing, fan-out, error
attribution, canary outcome accounting.

Handles only need `.method.remote(...)` returning awaitables, so unit tests can pass fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipfleet.api.limits import check_count, check_texts, render_prompts
from clipfleet.config import (
    STABLE_VARIANT,
    AppArgs,
    ClipModelSpec,
    ResNetSpec,
    clip_deployment_name,
    resnet_deployment_name,
)
from clipfleet.errors import InvalidRequestError, PayloadTooLargeError, is_variant_fault
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.affinity import with_affinity
from clipfleet.ingress.fanout import Judged, gather_items, raise_for
from clipfleet.ingress.fanout import once_more_if_replica_lost as again
from clipfleet.ingress.fleet_view import FleetView
from clipfleet.ingress.service_images import ImageOperations
from clipfleet.ingress.service_mixed import MixedOperations
from clipfleet.ingress.targets import Profile, Routing
from clipfleet.models.catalog import MultiplexedProfiles
from clipfleet.models.geometry import InputGeometry
from clipfleet.rollout.traffic import TrafficConfig, TrafficManager
from clipfleet.scoring import ScoreSemantics

logger = logging.getLogger("ray.serve")
# Of the request's deadline, what a cold start may not take: the request's own work after it.
COLD_START_MARGIN_S = 2.0


def clip_model_label(spec: ClipModelSpec, public: bool = True) -> str:
    """The model as responses name it (`model`, /readyz): a local directory or checkpoint file
    by its last component, never its path; the detail documents (/v1/status) have the rest.
    `public=False`: with paths, for the operator's own outputs (batch jobs)."""
    name = public_name if public else str
    return f"{name(spec.model)}/{name(spec.pretrained)}" if spec.pretrained else name(spec.model)


def resnet_model_label(spec: ResNetSpec) -> str:
    return f"{spec.model}/{Path(spec.weights).name}"


def public_name(source: str) -> str:
    """A hub id or open_clip tag as it is; a local path (`local-dir:`, absolute, relative or
    an existing file or folder) by its last component."""
    path = source.removeprefix("local-dir:")
    local = path != source or path.startswith(("/", "~", ".")) or os.path.exists(path)
    return Path(path).name if local else source


def counts_against_variant(exc: BaseException) -> bool:
    """Blame where it happened: only a failure the variant's own replica raised while serving
    (marked there: clipfleet/replicas/serving.py) counts. A fetch, DNS, URL or validation
    failure, a deadline, an unreachable replica or a bug anywhere else does not, whatever its
    class: those say nothing about the variant, and a client could provoke them at will."""
    return is_variant_fault(exc)


class ClipfleetService(MixedOperations, ImageOperations):
    def __init__(
        self,
        args: AppArgs,
        fetcher: Any,
        scorer: Any,
        clip_encoders: dict[str, dict[str, Any]],
        resnet_encoders: dict[str, Any],
        multiplexed_encoders: dict[str, Any] | None = None,
        traffic: TrafficManager | None = None,
    ) -> None:
        self.args = args
        self.fetcher = fetcher
        self.scorer = scorer
        clip_encoders, resnet_encoders = with_affinity(args, clip_encoders, resnet_encoders)
        self.profiles = {
            name: Profile(
                name=name,
                clip=dict(clip_encoders[name]),
                clip_labels={v: clip_model_label(s) for v, s in spec.variants.items()},
                resnet=resnet_encoders[name],
                resnet_label=resnet_model_label(spec.resnet),
            )
            for name, spec in args.profiles.items()
        }
        self.traffic = traffic or TrafficManager(
            {n: list(p.variants) for n, p in args.profiles.items()}
        )
        self._logit_scales: dict[tuple[str, str], float] = {}
        self._semantics: dict[tuple[str, str], ScoreSemantics] = {}
        self._spaces: dict[tuple[str, str, str], Any] = {}  # (profile, variant, encoder)
        self._geometries: dict[tuple[str, str], InputGeometry | None] = {}
        self.multiplexed = MultiplexedProfiles(args.multiplexed, multiplexed_encoders or {})
        self.fleet = FleetView(args, fetcher, scorer, self.profiles, self.multiplexed, self.traffic)

    async def logit_scale(self, profile: Profile, variant: str) -> float:
        """Fixed per loaded model: asked once per variant."""
        key = (profile.name, variant)
        if key not in self._logit_scales:
            description = await profile.clip[variant].describe.remote()
            self._logit_scales[key] = description["logit_scale"]
        return self._logit_scales[key]

    async def semantics(self, profile: Profile, variant: str) -> ScoreSemantics:
        """The model's score semantics (fixed per loaded model): asked once per variant or
        multiplexed model id."""
        key = (profile.name, variant)
        if key not in self._semantics:
            if profile.name in self.multiplexed:
                answer = await profile.clip[variant].scoring.remote()
            else:
                answer = (await profile.clip[variant].describe.remote()).get("semantics")
                if answer is None:  # an encoder that predates score semantics: CLIP
                    answer = {"logit_scale": await self.logit_scale(profile, variant)}
            self._semantics[key] = ScoreSemantics(**answer)
        return self._semantics[key]

    def apply_traffic(self, config: TrafficConfig) -> None:
        self.traffic.apply(config)

    def traffic_view(self) -> dict:
        """The application's traffic state (every replica reports the same): per profile,
        per variant weights, rollback, windowed outcomes."""
        return self.traffic.view()

    # -- validation and routing -------------------------------------------------------------
    def profile(self, name: str | None) -> Profile:
        name = name or self.args.default_profile
        if name not in self.profiles:
            raise InvalidRequestError(
                f"unknown profile {name!r}; choose one of {sorted(self.profiles)}",
                "profile",
                status=422,
            )
        return self.profiles[name]

    def route(self, profile_name: str | None, routing: Routing | None) -> tuple[Profile, str]:
        """The profile and variant to serve; an explicitly pinned variant is honoured."""
        routing = routing or Routing()
        if routing.model_id is not None or profile_name in self.multiplexed:
            return self.multiplexed_route(profile_name or self.args.default_profile, routing)
        profile = self.profile(profile_name)
        try:
            return profile, self.traffic.choose(profile.name, routing.key, routing.variant)
        except KeyError:
            raise InvalidRequestError(
                f"profile {profile.name!r} has no variant {routing.variant!r}; "
                f"choose one of {sorted(profile.clip)}",
                "X-Clipfleet-Variant",
                status=422,
            ) from None

    def multiplexed_route(self, name: str, routing: Routing) -> tuple[Profile, str]:
        """A multiplexed profile's model; the variant slot holds the model id."""
        handle = self.multiplexed.handle_for(name, routing.model_id, self.profiles)
        model_id = routing.model_id
        label = f"{name}:{model_id}"
        profile = Profile(name, {model_id: handle}, {model_id: label}, None, "")
        return profile, model_id

    def check_count(self, count: int, field: str) -> None:
        check_count(count, field, self.args.limits)

    def check_texts(self, texts: Sequence[str], field: str) -> None:
        """Each text within max_text_chars, all of them within max_prompt_chars."""
        check_texts(texts, field, self.args.limits)

    @contextlib.asynccontextmanager
    async def _observed(
        self, profile: Profile, variant: str, routing: Routing | None
    ) -> AsyncIterator[Judged]:
        """Feed the request's outcome to the canary guard: a success, or a failure the variant
        is blamed for (`counts_against_variant`); nothing else is recorded. Requests pinned to
        a variant don't count (a client must not be able to steer a rollback)."""
        if profile.name in self.multiplexed:  # no canary split to guard
            yield Judged()
            return
        await self._warm(profile.name, clip_deployment_name(profile.name, variant))
        started = time.monotonic()
        judged = Judged()
        ok: bool | None = True
        if routing is not None and routing.variant is not None:
            ok = None
        try:
            yield judged
        except asyncio.CancelledError:
            ok = None  # the client went away
            raise
        except Exception as exc:
            ok = None if ok is None or not counts_against_variant(exc) else False
            exc.clipfleet_served = (profile.name, variant)  # error responses name it too
            raise
        finally:
            if ok is not None:
                latency_s = judged.encoder_s
                if latency_s is None:
                    latency_s = time.monotonic() - started
                self.traffic.record(profile.name, variant, ok, latency_s)

    async def _warm(self, profile: str, deployment: str) -> None:
        """Wait for a scaled-to-zero deployment's cold start if it fits in the request's
        deadline; else 503 + Retry-After (clipfleet/ingress/coldstart.py)."""
        if self.fleet.cold_starts is not None:
            budget_s = self.args.limits.request_timeout_s - COLD_START_MARGIN_S
            await self.fleet.cold_starts.admit(profile, [deployment], budget_s)

    def _served(self, profile: Profile, variant: str, label: str, **body) -> dict:
        return {**body, "profile": profile.name, "variant": variant, "model": label}

    # -- operations -------------------------------------------------------------------------
    async def embed_images(
        self,
        sources: Sequence[ImageSource],
        encoder: str,
        profile_name: str | None,
        routing: Routing | None = None,
    ) -> dict:
        self.check_count(len(sources), "images")
        if encoder == "resnet":
            if (routing and routing.model_id) or profile_name in self.multiplexed:
                raise InvalidRequestError(
                    "multiplexed profiles serve CLIP models only", "encoder", status=422
                )
            profile = self.profile(profile_name)
            await self._warm(
                profile.name, resnet_deployment_name(self.args.profiles[profile.name].resnet)
            )
            key = ("", profile.resnet_label)
            vectors = await self._image_vectors(profile.resnet, key, sources)
            body = _embedding_body(vectors, encoder)
            return self._served(profile, STABLE_VARIANT, profile.resnet_label, **body)
        profile, variant = self.route(profile_name, routing)
        clip = profile.clip[variant]
        async with self._observed(profile, variant, routing) as judged:
            vectors = await self._image_vectors(clip, (profile.name, variant), sources, judged)
        body = _embedding_body(vectors, encoder)
        return self._served(profile, variant, profile.clip_labels[variant], **body)

    async def _text_vectors(
        self, clip: Any, texts: Sequence[str], count_tokens: bool
    ) -> tuple[list[np.ndarray], list[int] | None]:
        """The texts' vectors from `clip` in one call, each text tokenized once there (and, when
        asked, their token counts from those same tokens)."""
        counting = {"count_tokens": True} if count_tokens else {}
        result = await again(lambda: clip.embed_texts.remote(list(texts), **counting))
        matrix, token_counts = result if count_tokens else (result, None)
        return list(matrix), (list(token_counts) if count_tokens else None)

    async def embed_texts(
        self,
        texts: Sequence[str],
        profile_name: str | None,
        routing: Routing | None = None,
        count_tokens: bool = False,
    ) -> dict:
        """`count_tokens`: also `token_counts`, per text, from the encoder's tokenizer."""
        self.check_count(len(texts), "texts")
        self.check_texts(texts, "texts")
        profile, variant = self.route(profile_name, routing)
        clip = profile.clip[variant]
        async with self._observed(profile, variant, routing):
            vectors, token_counts = await self._text_vectors(clip, texts, count_tokens)
        body = _embedding_body(vectors, "clip")
        if count_tokens:
            body["token_counts"] = token_counts
        return self._served(profile, variant, profile.clip_labels[variant], **body)

    async def score(
        self,
        pairs: Sequence[tuple[ImageSource, str]],
        profile_name: str | None,
        routing: Routing | None = None,
    ) -> dict:
        self.check_count(len(pairs), "pairs")
        self.check_texts([text for _, text in pairs], "pairs")
        profile, variant = self.route(profile_name, routing)
        clip = profile.clip[variant]

        async def score_pair(
            source: ImageSource, text: str, judged: Judged, extra: dict[str, Any]
        ) -> dict:
            """One encoder call for the pair's image and text, then the Scorer stage."""
            image = await self._image_input(source, (profile.name, variant), clip)
            vectors, seconds = await clip.embed_pair.remote(image, text, timed=True)
            judged.add(seconds)
            return await self.scorer.score_pair.remote(*vectors, **extra)

        async with self._observed(profile, variant, routing) as judged:
            semantics = await self.semantics(profile, variant)
            extra = {"semantics": semantics} if semantics.activation != "softmax" else {}
            results = await gather_items(
                [again(lambda s=s, t=t: score_pair(s, t, judged, extra)) for s, t in pairs],
                "pairs",
            )
        label = profile.clip_labels[variant]
        body = {"results": results, "activation": semantics.activation}
        return self._served(profile, variant, label, **body)

    async def tag(
        self,
        source: ImageSource,
        labels: Sequence[str] | None,
        top_k: int,
        prompt_template: str | None,
        profile_name: str | None,
        routing: Routing | None = None,
        threshold: float | None = None,
    ) -> dict:
        labels = list(labels or self.args.default_labels)
        if len(labels) > self.args.limits.max_labels:
            raise PayloadTooLargeError(
                f"{len(labels)} labels; the limit is {self.args.limits.max_labels}", "labels"
            )
        template = prompt_template or self.args.prompt_template
        prompts = render_prompts(template, labels, self.args.limits)
        profile, variant = self.route(profile_name, routing)
        clip = profile.clip[variant]
        top_k = min(top_k, self.args.limits.max_top_k, len(labels))

        async def tag_image(judged: Judged, semantics: ScoreSemantics) -> list[dict]:
            label_vectors = clip.embed_texts.remote(prompts)
            key = (profile.name, variant)
            image_vector = await self._image_beside(clip, key, source, label_vectors, judged)
            return await self.scorer.tag.remote(
                image_vector, label_vectors, labels, semantics, top_k, threshold
            )

        async with self._observed(profile, variant, routing) as judged:
            semantics = await self.semantics(profile, variant)
            try:
                tags = await again(lambda: tag_image(judged, semantics))
            except Exception as exc:
                raise_for(exc, "image")
        label = profile.clip_labels[variant]
        return self._served(profile, variant, label, tags=tags, activation=semantics.activation)


def _embedding_body(vectors: list[np.ndarray], encoder: str) -> dict:
    matrix = np.stack(vectors)
    return {"embeddings": matrix.tolist(), "dim": int(matrix.shape[1]), "encoder": encoder}
