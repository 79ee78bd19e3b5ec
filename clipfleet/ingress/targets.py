"""The one resolver of what serves a request: `Targets.resolve` turns what the client asked
(`Routing`: a profile name, a `model` reference, a pinned variant, a sticky key) into a `Target`
(the profile, variant, model and multiplexed model id that serve it, and how it was chosen).

Every route and service operation resolves here; the request fields it reads are named in the
errors it raises (`model`, `profile`, `X-Clipfleet-Model`, `X-Clipfleet-Variant`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from clipfleet.config import STABLE_VARIANT, AppArgs, ClipModelSpec, ResNetSpec
from clipfleet.errors import InvalidRequestError, ModelNotFoundError
from clipfleet.modelref import ModelRef, parse_model_ref
from clipfleet.models.catalog import MultiplexedProfiles
from clipfleet.rollout.traffic import TrafficManager

MODEL_HEADER = "X-Clipfleet-Model"
VARIANT_HEADER = "X-Clipfleet-Variant"
# How the variant (or multiplexed model) was chosen: the body's `model` ("request"), a header
# (X-Clipfleet-Variant / X-Clipfleet-Model), the profile's traffic split ("canary_split": it has
# more than one variant), or its only variant ("default"; a ResNet is always its profile's one).
ChosenBy = Literal["default", "request", "header", "canary_split"]


@dataclass(frozen=True)
class Routing:
    """How the client asked to be routed: a sticky key, an explicitly pinned variant or a
    multiplexed profile's model id, and the request fields that named them."""

    key: str | None = None
    variant: str | None = None
    model_id: str | None = None  # a multiplexed profile's model (`<profile>:<model-id>`)
    profile_from: str = "profile"  # the field that named the profile
    variant_from: str = VARIANT_HEADER  # the field that pinned the variant or model id


@dataclass(frozen=True)
class Profile:
    name: str
    clip: dict[str, Any]  # variant -> DeploymentHandle of its ClipEncoder
    clip_labels: dict[str, str]
    resnet: Any  # DeploymentHandle of the profile's ResNetEncoder
    resnet_label: str

    @property
    def clip_label(self) -> str:
        return self.clip_labels[STABLE_VARIANT]


@dataclass(frozen=True)
class Target:
    """What serves a request. `variant` is the variant's name (`stable` for a ResNet), or for a
    multiplexed profile the model id; `model` is the model's public label."""

    profile: Profile
    variant: str
    model: str
    encoder: Literal["clip", "resnet"] = "clip"
    model_id: str | None = None
    chosen_by: ChosenBy = "default"
    key: str | None = None  # the sticky routing key it was chosen with
    pinned: bool = False  # the client chose the variant (its outcome never steers a rollback)

    @property
    def handle(self) -> Any:
        return self.profile.resnet if self.encoder == "resnet" else self.profile.clip[self.variant]

    @property
    def served_id(self) -> str:
        """`<profile>/<variant>` or `<profile>:<model-id>`: the id the peers' routes answer."""
        separator = "/" if self.model_id is None else ":"
        return f"{self.profile.name}{separator}{self.variant}"


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


def profiles_of(args: AppArgs, clip: dict[str, dict[str, Any]], resnet: dict[str, Any]):
    """Each profile over its encoders' handles, with the labels responses name them by."""
    return {
        name: Profile(
            name=name,
            clip=dict(clip[name]),
            clip_labels={v: clip_model_label(s) for v, s in spec.variants.items()},
            resnet=resnet[name],
            resnet_label=resnet_model_label(spec.resnet),
        )
        for name, spec in args.profiles.items()
    }


def _chosen_by(field: str) -> ChosenBy:
    return "header" if field.startswith("X-") else "request"


@dataclass
class Targets:
    default_profile: str
    profiles: dict[str, Profile]
    multiplexed: MultiplexedProfiles
    traffic: TrafficManager

    # -- what the client asked ----------------------------------------------------------------
    def requested(
        self, profile: str | None, model: str | None, header: str | None, routing: Routing
    ) -> tuple[str | None, Routing]:
        """The v1 routes' ask: the body's `model` (else `profile`), else the X-Clipfleet-Model
        header, in the one grammar of clipfleet.modelref (a malformed one: 422)."""
        text, field = (model, "model") if model is not None else (header, MODEL_HEADER)
        if text is None or (model is None and profile is not None):
            return profile, routing
        try:
            ref = parse_model_ref(text)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), field, status=422) from None
        return ref.profile, self._pinned_by(ref, routing, field)

    def named(self, model: str | None, routing: Routing) -> tuple[str | None, Routing]:
        """The peers' routes' ask: a body's `model`, checked against what is served (unknown:
        404 `model_not_found`); a variant or model id pins it; no model: the default profile."""
        if model is None:
            return None, routing
        ref = self.model_ref(model)
        return ref.profile, self._pinned_by(ref, routing, "model")

    @staticmethod
    def _pinned_by(ref: ModelRef, routing: Routing, field: str) -> Routing:
        if ref.variant is None and ref.model_id is None:
            return dataclasses.replace(routing, profile_from=field)
        return dataclasses.replace(
            routing,
            variant=ref.variant or routing.variant,
            model_id=ref.model_id,
            profile_from=field,
            variant_from=field,
        )

    def model_ref(self, text: str, param: str | None = "model") -> ModelRef:
        """`text` parsed and checked against the served profiles and variants (404 if unknown;
        a multiplexed model id is checked when it is resolved)."""
        try:
            ref = parse_model_ref(text)
        except ValueError as exc:
            raise ModelNotFoundError(str(exc), param) from None
        if ref.profile in self.multiplexed:
            if ref.model_id is None:
                raise ModelNotFoundError(
                    f"model {text!r}: profile {ref.profile!r} serves many models; name one as "
                    f"{ref.profile}:<model-id>",
                    param,
                )
            return ref
        profile = self.profiles.get(ref.profile)
        if profile is None:
            served = sorted([*self.profiles, *self.multiplexed.handles])
            raise ModelNotFoundError(
                f"model {text!r} does not exist; GET /v1/models lists the served ones "
                f"(profiles: {', '.join(served)})",
                param,
            )
        if ref.model_id is not None:
            raise ModelNotFoundError(
                f"model {text!r} does not exist: profile {ref.profile!r} serves no multiplexed "
                "models; use <profile> or <profile>/<variant>",
                param,
            )
        if ref.variant is not None and ref.variant not in profile.clip:
            raise ModelNotFoundError(
                f"model {text!r} does not exist: profile {ref.profile!r} has variants "
                f"{', '.join(sorted(profile.clip))}",
                param,
            )
        return ref

    # -- what serves it -----------------------------------------------------------------------
    def resolve(
        self,
        profile_name: str | None,
        routing: Routing | Target | None = None,
        encoder: Literal["clip", "resnet"] = "clip",
    ) -> Target:
        """The target of a request; an explicitly pinned variant is honoured. A target already
        resolved is returned as it is."""
        if isinstance(routing, Target):
            return routing
        routing = routing or Routing()
        multiplexed = routing.model_id is not None or profile_name in self.multiplexed
        if encoder == "resnet":
            if multiplexed:
                raise InvalidRequestError(
                    "multiplexed profiles serve CLIP models only", "encoder", status=422
                )
            profile = self.profile(profile_name, routing.profile_from)
            return Target(profile, STABLE_VARIANT, profile.resnet_label, "resnet", key=routing.key)
        if multiplexed:
            return self._multiplexed(profile_name or self.default_profile, routing)
        profile = self.profile(profile_name, routing.profile_from)
        try:
            variant = self.traffic.choose(profile.name, routing.key, routing.variant)
        except KeyError:
            raise InvalidRequestError(
                f"profile {profile.name!r} has no variant {routing.variant!r}; "
                f"choose one of {sorted(profile.clip)}",
                routing.variant_from,
                status=422,
            ) from None
        pinned = routing.variant is not None
        if pinned:
            chosen_by = _chosen_by(routing.variant_from)
        else:
            chosen_by = "canary_split" if len(profile.clip) > 1 else "default"
        label = profile.clip_labels[variant]
        return Target(profile, variant, label, chosen_by=chosen_by, key=routing.key, pinned=pinned)

    def profile(self, name: str | None, field: str = "profile") -> Profile:
        name = name or self.default_profile
        if name not in self.profiles:
            raise InvalidRequestError(
                f"unknown profile {name!r}; choose one of {sorted(self.profiles)}",
                field,
                status=422,
            )
        return self.profiles[name]

    def _multiplexed(self, name: str, routing: Routing) -> Target:
        """A multiplexed profile's model: the variant slot holds the model id."""
        handle = self.multiplexed.handle_for(name, routing.model_id, self.profiles)
        model_id = routing.model_id
        label = f"{name}:{model_id}"
        profile = Profile(name, {model_id: handle}, {model_id: label}, None, "")
        chosen_by = _chosen_by(routing.variant_from)
        return Target(profile, model_id, label, "clip", model_id, chosen_by, routing.key, True)
