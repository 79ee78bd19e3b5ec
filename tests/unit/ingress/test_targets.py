"""The one resolver (clipfleet/ingress/targets.py): what a request asked, in whichever field,
becomes one Target (profile, variant, model, model id, how it was chosen), and the errors name
the field the bad value came from. And no second resolver: outside targets.py, no ingress or API
module picks a variant, a multiplexed handle or builds a Target itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from clipfleet.errors import ClipfleetError
from clipfleet.ingress.targets import Profile, Routing, Targets
from clipfleet.models.catalog import MultiplexedProfiles
from clipfleet.rollout.traffic import TrafficConfig, TrafficManager

ROOT = Path(__file__).resolve().parents[3]
STABLE, CANARY, RESNET = object(), object(), object()


@pytest.fixture
def targets() -> Targets:
    fast = Profile(
        "fast",
        {"stable": STABLE, "canary": CANARY},
        {"stable": "m/a", "canary": "m/b"},
        RESNET,
        "resnet50/r.pt",
    )
    alone = Profile("alone", {"stable": STABLE}, {"stable": "m/c"}, RESNET, "resnet50/r.pt")
    traffic = TrafficManager({"fast": ["stable", "canary"], "alone": ["stable"]})
    traffic.apply(TrafficConfig(weights={"fast": {"stable": 50, "canary": 50}}))
    return Targets("fast", {"fast": fast, "alone": alone}, MultiplexedProfiles({}, {}), traffic)


def refused(call) -> ClipfleetError:
    with pytest.raises(ClipfleetError) as caught:
        call()
    return caught.value


def test_the_default_profile_by_its_canary_split(targets):
    chosen = {targets.resolve(None, Routing(key=f"k{n}")).variant for n in range(40)}
    assert chosen == {"stable", "canary"}
    target = targets.resolve(None, Routing(key="k1"))
    assert target.profile.name == "fast" and target.chosen_by == "canary_split"
    assert target.model == {"stable": "m/a", "canary": "m/b"}[target.variant]
    assert target.key == "k1" and not target.pinned and target.model_id is None
    assert target.handle is {"stable": STABLE, "canary": CANARY}[target.variant]
    only = targets.resolve("alone")
    assert (only.variant, only.chosen_by, only.served_id) == ("stable", "default", "alone/stable")


def test_a_pinned_variant_says_which_field_pinned_it(targets):
    by_header = targets.resolve("fast", Routing(variant="canary"))
    assert (by_header.variant, by_header.chosen_by, by_header.pinned) == ("canary", "header", True)
    asked = targets.requested(None, "fast/canary", None, Routing())
    assert targets.resolve(*asked).chosen_by == "request"
    asked = targets.requested(None, None, "fast/canary", Routing())
    assert targets.resolve(*asked).chosen_by == "header"
    asked = targets.named("fast/canary", Routing(key="k"))
    assert targets.resolve(*asked).served_id == "fast/canary"


@pytest.mark.parametrize(
    ("asked", "param"),
    [
        (("nope", None, None), "profile"),
        ((None, "nope", None), "model"),
        ((None, None, "nope"), "X-Clipfleet-Model"),
        ((None, "fast/nope", None), "model"),
        ((None, None, "fast/nope"), "X-Clipfleet-Model"),
        ((None, "Bad Name", None), "model"),
    ],
)
def test_errors_name_the_field_the_bad_value_came_from(targets, asked, param):
    error = refused(lambda: targets.resolve(*targets.requested(*asked, Routing())))
    assert error.status == 422 and error.param == param


def test_a_pinned_unknown_variant_names_the_variant_header(targets):
    error = refused(lambda: targets.resolve("fast", Routing(variant="nope")))
    assert error.param == "X-Clipfleet-Variant"


def test_unknown_models_of_the_peers_routes_are_404(targets):
    for model in ("nope", "fast/nope", "fast:some-id", "Bad Name"):
        error = refused(lambda m=model: targets.named(m, Routing()))
        assert (error.status, error.param, error.code) == (404, "model", "model_not_found")


def test_a_resnet_target_is_its_profiles_one(targets):
    target = targets.resolve(None, Routing(key="k"), "resnet")
    assert (target.encoder, target.variant, target.model) == ("resnet", "stable", "resnet50/r.pt")
    assert target.handle is RESNET


def test_a_resolved_target_passes_through(targets):
    target = targets.resolve("fast", Routing(variant="canary"))
    assert targets.resolve(None, target) is target


# -- no second resolver -------------------------------------------------------------------------
RESOLVING_CALLS = {"choose", "handle_for", "parse_model_ref", "Target"}
# What may call them outside targets.py: the schema's shape check of `model` (no resolution),
# and batch jobs, which run in a process of their own (clipfleet/batch/settings.py).
ALLOWED = {
    ("clipfleet.api.schemas.v1", "parse_model_ref"),
    ("clipfleet.batch.settings", "parse_model_ref"),
}


def resolving_calls(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in RESOLVING_CALLS:
                found.add(name)
    return found


def test_only_targets_resolves():
    offenders = {}
    for package in ("clipfleet", "deployments", "pipelines"):
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            if module in ("clipfleet.ingress.targets", "clipfleet.tools.configgen"):
                continue  # configgen's Target is a generated file's
            calls = {c for c in resolving_calls(path) if (module, c) not in ALLOWED}
            if module == "clipfleet.rollout.traffic":
                calls.discard("choose")  # its own definition's callers inside it
            if calls:
                offenders[module] = sorted(calls)
    assert offenders == {}


def test_the_resolver_check_can_fail(tmp_path):
    second = tmp_path / "second.py"
    second.write_text("def route(s, p, r):\n    return s.traffic.choose(p, r.key, r.variant)\n")
    assert resolving_calls(second) == {"choose"}
