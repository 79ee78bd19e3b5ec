"""Seed 001, the "Vision-Language Similarity Service": CLIP scores under `/evaluator`.

`image_input` is an http(s) URL, a `data:` URL, or a local file path; paths are served only
from the directory named by CLIPFLEET_LOCAL_IMAGE_DIR (off by default; see common.py).
`model_config_name` is a clipfleet profile name (`fast`, `accurate`); unset = the default
profile. `model_used` reports the profile that served the request, `model_name` its CLIP.

Batch: each evaluation succeeds or fails on its own (`clip_score: null` plus `error`), and
`batch_size` is how many of them are evaluated at once.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field

from clipfleet.api.compat.common import (
    Service,
    image_reference_source,
    snapshot,
    system_resources,
)
from clipfleet.api.schemas.v1 import HARD_MAX_BASE64, HARD_MAX_ITEMS, HARD_MAX_TEXT, ProfileName
from clipfleet.errors import find_clipfleet_error
from clipfleet.ingress.service import ClipfleetService

router = APIRouter(tags=["compat: seed 001 (vision-language similarity)"])

# Per ingress replica; a dedicated registry keeps these apart from Ray's own metrics.
REGISTRY = CollectorRegistry()
EVALUATIONS = Counter(
    "clipfleet_compat_evaluations",
    "Image-text evaluations served by the seed 001 routes",
    ["endpoint", "outcome"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "clipfleet_compat_evaluation_seconds",
    "Seconds per seed 001 evaluation request",
    ["endpoint"],
    registry=REGISTRY,
)
# The application's traffic state (the same from every replica), set at each scrape.
TRAFFIC_WEIGHT = Gauge(
    "clipfleet_compat_traffic_weight",
    "Effective canary traffic weight per profile variant (0 after a rollback), app-wide",
    ["profile", "variant"],
    registry=REGISTRY,
)
ROLLED_BACK = Gauge(
    "clipfleet_compat_canary_rolled_back",
    "1 while a variant is rolled back, app-wide",
    ["profile", "variant"],
    registry=REGISTRY,
)


class EvaluationRequest(BaseModel):
    image_input: str = Field(min_length=1, max_length=HARD_MAX_BASE64)
    text_prompt: str = Field(min_length=1, max_length=HARD_MAX_TEXT)
    model_config_name: ProfileName | None = Field(None, description="fast | accurate (a profile)")


class BatchEvaluationRequest(BaseModel):
    evaluations: list[EvaluationRequest] = Field(min_length=1, max_length=HARD_MAX_ITEMS)
    batch_size: int = Field(8, ge=1, le=HARD_MAX_ITEMS)


class EvaluationResult(BaseModel):
    image_input: str
    text_prompt: str
    clip_score: float | None
    processing_time_ms: float
    model_used: str | None
    model_name: str | None = None
    error: str | None = None


class BatchEvaluationResponse(BaseModel):
    results: list[EvaluationResult]
    batch_size: int
    total_evaluations: int
    successful_evaluations: int
    failed_evaluations: int
    total_processing_time_ms: float


async def _evaluate(service: ClipfleetService, item: EvaluationRequest) -> dict:
    started = time.perf_counter()
    source = await image_reference_source(service, item.image_input, "image_input")
    scored = await service.score([(source, item.text_prompt)], item.model_config_name)
    return {
        "image_input": item.image_input,
        "text_prompt": item.text_prompt,
        "clip_score": scored.results[0]["clip_score"],
        "processing_time_ms": (time.perf_counter() - started) * 1000,
        "model_used": scored.target.profile.name,
        "model_name": scored.target.model,
    }


async def _evaluate_or_report(
    service: ClipfleetService, item: EvaluationRequest, limit: asyncio.Semaphore
) -> dict:
    started = time.perf_counter()
    async with limit:
        try:
            return await _evaluate(service, item)
        except Exception as exc:
            error = find_clipfleet_error(exc)
            if error is None:
                raise
            where = f" ({error.param})" if error.param else ""
            return {
                "image_input": item.image_input,
                "text_prompt": item.text_prompt,
                "clip_score": None,
                "processing_time_ms": (time.perf_counter() - started) * 1000,
                "model_used": item.model_config_name,
                "error": f"{error.message}{where}",
            }


@router.post("/evaluator/v1/evaluation/single", response_model=EvaluationResult)
async def evaluate_single(body: EvaluationRequest, service: Service):
    with LATENCY.labels("single").time():
        try:
            result = await _evaluate(service, body)
        except Exception:
            EVALUATIONS.labels("single", "error").inc()
            raise
    EVALUATIONS.labels("single", "success").inc()
    return result


@router.post("/evaluator/v1/evaluation/batch", response_model=BatchEvaluationResponse)
async def evaluate_batch(body: BatchEvaluationRequest, service: Service):
    service.check_count(len(body.evaluations), "evaluations")
    started = time.perf_counter()
    limit = asyncio.Semaphore(body.batch_size)
    with LATENCY.labels("batch").time():
        results = await asyncio.gather(
            *(_evaluate_or_report(service, item, limit) for item in body.evaluations)
        )
    failed = sum(result["clip_score"] is None for result in results)
    EVALUATIONS.labels("batch", "success").inc(len(results) - failed)
    EVALUATIONS.labels("batch", "error").inc(failed)
    return {
        "results": results,
        "batch_size": body.batch_size,
        "total_evaluations": len(results),
        "successful_evaluations": len(results) - failed,
        "failed_evaluations": failed,
        "total_processing_time_ms": (time.perf_counter() - started) * 1000,
    }


@router.get("/evaluator/health")
async def evaluator_health(service: Service) -> JSONResponse:
    """200 "healthy" when every deployment answers, else 503 "unhealthy"."""
    state = await snapshot(service)
    body = {
        "status": "healthy" if state.ready else "unhealthy",
        "default_model_config": service.args.default_profile,
        "model_configs": {name: p.clip_label for name, p in service.profiles.items()},
        "random_weights": state.random_weights,
        "warnings": state.warnings(system_resources()),
    }
    return JSONResponse(status_code=200 if state.ready else 503, content=body)


@router.get("/system/health")
async def system_health() -> dict:
    """The machine the ingress runs on (CPU, RAM, GPU when visible); always 200 if it answers."""
    return {"status": "healthy", "resources": system_resources()}


@router.get("/evaluator/metrics")
async def metrics(service: Service) -> Response:
    for profile, variants in service.traffic_view().items():
        for variant, state in variants.items():
            TRAFFIC_WEIGHT.labels(profile, variant).set(state["weight"])
            ROLLED_BACK.labels(profile, variant).set(1 if state["rolled_back"] else 0)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
