"""What the routes do, over deployment handles: each operation checks its bounds, resolves its
target (clipfleet/ingress/targets.py, unless the route already did), runs the fan-out, accounts
the canary outcome and returns a typed result (clipfleet/ingress/results.py) holding arrays.

Handles only need `.method.remote(...)` returning awaitables, so unit tests can pass fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from clipfleet.api.limits import check_count, check_texts, render_prompts
from clipfleet.config import AppArgs, clip_deployment_name, resnet_deployment_name
from clipfleet.errors import PayloadTooLargeError, is_variant_fault
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.affinity import with_affinity
from clipfleet.ingress.fanout import Judged, gather_items, raise_for
from clipfleet.ingress.fanout import once_more_if_replica_lost as again
from clipfleet.ingress.fleet_view import FleetView
from clipfleet.ingress.results import Embeddings, Relevance, Scores, Tags
from clipfleet.ingress.service_images import RequestImages
from clipfleet.ingress.service_mixed import MixedItem, check_items, item_vectors
from clipfleet.ingress.targets import Profile, Routing, Target, Targets, profiles_of
from clipfleet.models.catalog import MultiplexedProfiles
from clipfleet.models.embedding_space import VectorSpace
from clipfleet.rollout.traffic import TrafficConfig, TrafficManager
from clipfleet.scoring import ScoreSemantics, relevance_scores

logger = logging.getLogger("ray.serve")
# Of the request's deadline, what a cold start may not take: the request's own work after it.
COLD_START_MARGIN_S = 2.0
Asked = Routing | Target | None  # what the client asked, or the target a route resolved


def counts_against_variant(exc: BaseException) -> bool:
    """Blame where it happened: only a failure the variant's own replica raised while serving
    (marked there: clipfleet/replicas/serving.py) counts. A fetch, DNS, URL or validation
    failure, a deadline, an unreachable replica or a bug anywhere else does not, whatever its
    class: those say nothing about the variant, and a client could provoke them at will."""
    return is_variant_fault(exc)


class ClipfleetService:
    """Composed of `targets` (the one resolver), `images` (how images reach an encoder) and
    `fleet` (the deployment map, model details, readiness)."""

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
        self.scorer = scorer
        clip_encoders, resnet_encoders = with_affinity(args, clip_encoders, resnet_encoders)
        self.profiles = profiles_of(args, clip_encoders, resnet_encoders)
        self.traffic = traffic or TrafficManager(
            {n: list(p.variants) for n, p in args.profiles.items()}
        )
        self._logit_scales: dict[tuple[str, str], float] = {}
        self._semantics: dict[tuple[str, str], ScoreSemantics] = {}
        self._spaces: dict[tuple[str, str, str], Any] = {}  # (profile, variant, encoder)
        self.multiplexed = MultiplexedProfiles(args.multiplexed, multiplexed_encoders or {})
        self.targets = Targets(args.default_profile, self.profiles, self.multiplexed, self.traffic)
        self.images = RequestImages(fetcher, self.multiplexed)
        self.fleet = FleetView(args, fetcher, scorer, self.profiles, self.multiplexed, self.traffic)

    @property
    def fetcher(self) -> Any:
        return self.images.fetcher

    @fetcher.setter
    def fetcher(self, handle: Any) -> None:
        self.images.fetcher = handle

    # -- model facts, fixed per loaded model ----------------------------------------------------
    async def logit_scale(self, profile: Profile, variant: str) -> float:
        """Asked once per variant."""
        key = (profile.name, variant)
        if key not in self._logit_scales:
            description = await profile.clip[variant].describe.remote()
            self._logit_scales[key] = description["logit_scale"]
        return self._logit_scales[key]

    async def semantics(self, profile: Profile, variant: str) -> ScoreSemantics:
        """The model's score semantics: asked once per variant or multiplexed model id."""
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

    async def vector_space(self, target: Target) -> VectorSpace:
        """The served space of a target: asked of its encoder once per variant. A multiplexed
        model id is asked every time: the model behind an id may be reloaded from a changed
        checkpoint."""
        key = (target.profile.name, target.variant, target.encoder)
        if key in self._spaces:
            return self._spaces[key]
        space = VectorSpace.of(await target.handle.space.remote(), self.args.fetch)
        if target.model_id is None:
            self._spaces[key] = space
        return space

    def apply_traffic(self, config: TrafficConfig) -> None:
        self.traffic.apply(config)

    def traffic_view(self) -> dict:
        """The application's traffic state (every replica reports the same): per profile,
        per variant weights, rollback, windowed outcomes."""
        return self.traffic.view()

    # -- bounds and accounting ------------------------------------------------------------------
    def profile(self, name: str | None) -> Profile:
        return self.targets.profile(name)

    def check_count(self, count: int, field: str) -> None:
        check_count(count, field, self.args.limits)

    def check_texts(self, texts: Sequence[str], field: str) -> None:
        """Each text within max_text_chars, all of them within max_prompt_chars."""
        check_texts(texts, field, self.args.limits)

    @contextlib.asynccontextmanager
    async def _observed(self, target: Target) -> AsyncIterator[Judged]:
        """Feed the request's outcome to the canary guard: a success, or a failure the variant
        is blamed for (`counts_against_variant`); nothing else is recorded. Requests pinned to
        a variant don't count (a client must not be able to steer a rollback)."""
        profile, variant = target.profile.name, target.variant
        if target.model_id is not None:  # a multiplexed model: no canary split to guard
            yield Judged()
            return
        await self._warm(profile, clip_deployment_name(profile, variant))
        started = time.monotonic()
        judged = Judged()
        ok: bool | None = None if target.pinned else True
        try:
            yield judged
        except asyncio.CancelledError:
            ok = None  # the client went away
            raise
        except Exception as exc:
            ok = None if ok is None or not counts_against_variant(exc) else False
            raise
        finally:
            if ok is not None:
                latency_s = judged.encoder_s
                if latency_s is None:
                    latency_s = time.monotonic() - started
                self.traffic.record(profile, variant, ok, latency_s)

    async def _warm(self, profile: str, deployment: str) -> None:
        """Wait for a scaled-to-zero deployment's cold start if it fits in the request's
        deadline; else 503 + Retry-After (clipfleet/ingress/coldstart.py)."""
        if self.fleet.cold_starts is not None:
            budget_s = self.args.limits.request_timeout_s - COLD_START_MARGIN_S
            await self.fleet.cold_starts.admit(profile, [deployment], budget_s)

    # -- operations -------------------------------------------------------------------------
    async def embed_images(
        self, sources: Sequence[ImageSource], encoder: str, profile_name=None, routing: Asked = None
    ) -> Embeddings:
        self.check_count(len(sources), "images")
        target = self.targets.resolve(profile_name, routing, encoder)
        if target.encoder == "resnet":
            spec = self.args.profiles[target.profile.name].resnet
            await self._warm(target.profile.name, resnet_deployment_name(spec))
            vectors = await self.images.vectors(target.handle, ("", target.model), sources)
            return Embeddings(target, vectors)
        key = (target.profile.name, target.variant)
        async with self._observed(target) as judged:
            vectors = await self.images.vectors(target.handle, key, sources, judged)
        return Embeddings(target, vectors)

    async def _text_vectors(
        self, clip: Any, texts: Sequence[str], count_tokens: bool
    ) -> tuple[np.ndarray, list[int] | None]:
        """The texts' vectors from `clip` in one call, each text tokenized once there (and, when
        asked, their token counts from those same tokens)."""
        counting = {"count_tokens": True} if count_tokens else {}
        result = await again(lambda: clip.embed_texts.remote(list(texts), **counting))
        matrix, token_counts = result if count_tokens else (result, None)
        return np.asarray(matrix), (list(token_counts) if count_tokens else None)

    async def embed_texts(
        self, texts: Sequence[str], profile_name=None, routing: Asked = None, count_tokens=False
    ) -> Embeddings:
        """`count_tokens`: also `token_counts`, per text, from the encoder's tokenizer."""
        self.check_count(len(texts), "texts")
        self.check_texts(texts, "texts")
        target = self.targets.resolve(profile_name, routing)
        async with self._observed(target):
            vectors, token_counts = await self._text_vectors(target.handle, texts, count_tokens)
        return Embeddings(target, vectors, token_counts)

    async def score(
        self, pairs: Sequence[tuple[ImageSource, str]], profile_name=None, routing: Asked = None
    ) -> Scores:
        self.check_count(len(pairs), "pairs")
        self.check_texts([text for _, text in pairs], "pairs")
        target = self.targets.resolve(profile_name, routing)
        clip, key = target.handle, (target.profile.name, target.variant)

        async def score_pair(
            source: ImageSource, text: str, judged: Judged, extra: dict[str, Any]
        ) -> dict:
            """One encoder call for the pair's image and text, then the Scorer stage."""
            image = await self.images.image_input(source, key, clip)
            vectors, seconds = await clip.embed_pair.remote(image, text, timed=True)
            judged.add(seconds)
            return await self.scorer.score_pair.remote(*vectors, **extra)

        async with self._observed(target) as judged:
            semantics = await self.semantics(target.profile, target.variant)
            extra = {"semantics": semantics} if semantics.activation != "softmax" else {}
            results = await gather_items(
                [again(lambda s=s, t=t: score_pair(s, t, judged, extra)) for s, t in pairs],
                "pairs",
            )
        return Scores(target, results, semantics.activation)

    async def tag(
        self,
        source: ImageSource,
        labels: Sequence[str] | None,
        top_k: int,
        prompt_template: str | None,
        profile_name: str | None = None,
        routing: Asked = None,
        threshold: float | None = None,
    ) -> Tags:
        labels = list(labels or self.args.default_labels)
        if len(labels) > self.args.limits.max_labels:
            raise PayloadTooLargeError(
                f"{len(labels)} labels; the limit is {self.args.limits.max_labels}", "labels"
            )
        template = prompt_template or self.args.prompt_template
        prompts = render_prompts(template, labels, self.args.limits)
        target = self.targets.resolve(profile_name, routing)
        clip, key = target.handle, (target.profile.name, target.variant)
        top_k = min(top_k, self.args.limits.max_top_k, len(labels))

        async def tag_image(judged: Judged, semantics: ScoreSemantics) -> list[dict]:
            label_vectors = clip.embed_texts.remote(prompts)
            image_vector = await self.images.beside(clip, key, source, label_vectors, judged)
            return await self.scorer.tag.remote(
                image_vector, label_vectors, labels, semantics, top_k, threshold
            )

        async with self._observed(target) as judged:
            semantics = await self.semantics(target.profile, target.variant)
            try:
                tags = await again(lambda: tag_image(judged, semantics))
            except Exception as exc:
                raise_for(exc, "image")
        return Tags(target, tags, semantics.activation)

    async def _items(
        self, target: Target, items: Sequence[MixedItem], judged: Judged, count_tokens: bool
    ) -> tuple[np.ndarray, list[int]]:
        key = (target.profile.name, target.variant)
        return await item_vectors(
            self.images, self._text_vectors, target.handle, key, items, judged, count_tokens
        )

    async def embed_items(
        self,
        items: Sequence[MixedItem],
        profile_name: str | None = None,
        routing: Asked = None,
        field: str = "input",
        count_tokens: bool = False,
    ) -> Embeddings:
        """One vector per item, all from one target, with the space they live in."""
        check_items(items, field, self.args.limits)
        target = self.targets.resolve(profile_name, routing)
        async with self._observed(target) as judged:
            vectors, token_counts = await self._items(target, items, judged, count_tokens)
        return Embeddings(target, vectors, token_counts, await self.vector_space(target))

    async def relevance(
        self,
        left: Sequence[MixedItem],
        right: Sequence[MixedItem],
        pairs: Sequence[tuple[int, int]],
        profile_name: str | None = None,
        routing: Asked = None,
        field: str = "documents",
    ) -> Relevance:
        """The model's own score of each (left[i], right[j]) pair (clipfleet.scoring's
        relevance_scores: the /v1/score maths), every item embedded once, on one target."""
        items = [*left, *right]
        check_items(items, field, self.args.limits)
        target = self.targets.resolve(profile_name, routing)
        async with self._observed(target) as judged:
            semantics = await self.semantics(target.profile, target.variant)
            vectors, token_counts = await self._items(target, items, judged, True)
        first = vectors[[i for i, _ in pairs]]
        second = vectors[[len(left) + j for _, j in pairs]]
        scores = relevance_scores(first, second, semantics)
        space = await self.vector_space(target)
        return Relevance(target, scores, semantics.activation, token_counts, space)
