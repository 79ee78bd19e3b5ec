"""Every Serve config the repo deploys, and what each one gives the app once merged over the code.

`effective(config)` is what Serve ends up running: per deployment, the options the code sets
(`@serve.deployment(...)` and `.options(...)` in the real graph) with the YAML entry over them,
the encoders' `user_config` resolved to a full `EncoderConfig`, and `args` with every pydantic
default filled in. EFFECTIVE_SNAPSHOT holds these values as the hand-written configs gave them
before serve_config.yaml was cut down to its differences (issue 13); rewrite it only for a value
changed on purpose:

    PYTHONPATH=. python -m tests.support.serve_configs   # rewrites the snapshot
"""

from __future__ import annotations

from pathlib import Path

import yaml

from clipfleet.config import FIXED_DEPLOYMENTS, AppArgs, EncoderConfig

ROOT = Path(__file__).resolve().parents[2]
EFFECTIVE_SNAPSHOT = ROOT / "tests" / "unit" / "fixtures" / "effective_serve_configs.yaml"
SERVE_CONFIG_FILES = (
    "serve_config.yaml",
    "serve_config.fast-int8.yaml",
    "cluster/serve_config.gpu.yaml",
    "loadtests/bench_config.yaml",
    "loadtests/bench_config.gpu.yaml",
)
RAYSERVICES = ("cluster/rayservice.yaml", "cluster/rayservice.gpu.yaml")


def rayservice_serve_config(text: str) -> dict:
    services = [doc for doc in yaml.safe_load_all(text) if doc and doc.get("kind") == "RayService"]
    assert len(services) == 1, "expected exactly one RayService"
    return yaml.safe_load(services[0]["spec"]["serveConfigV2"])


def deployed_configs() -> dict[str, dict]:
    """Every Serve config that is deployed somewhere, by file (RayServices: their serveConfigV2)."""
    configs = {name: yaml.safe_load((ROOT / name).read_text()) for name in SERVE_CONFIG_FILES}
    for name in RAYSERVICES:
        configs[name] = rayservice_serve_config((ROOT / name).read_text())
    return configs


def code_options(args: AppArgs) -> dict[str, dict]:
    """Per deployment of the real graph: the options the code sets, without a YAML."""
    from ray.serve._private.build_app import build_app as build

    from pipelines.app import build_app

    options = {}
    for built in build(build_app(args), name="app").deployments:
        config = built._deployment_config
        # minus what .bind() records (_init_args...) and what the YAML side resolves itself
        names = {n for n in config.user_configured_option_names if not n.startswith("_")}
        names -= {"name", "user_config"}
        options[built.name] = {
            name: built.ray_actor_options if name == "ray_actor_options" else getattr(config, name)
            for name in names
        }
    return options


def effective_app(app: dict) -> dict:
    raw_args = dict(app["args"])
    # Before issue 13 an encoder without a user_config got args.batching as its user_config.
    old_batching = raw_args.pop("batching", None)
    args = AppArgs(**raw_args)
    entries = {entry["name"]: entry for entry in app.get("deployments") or []}
    deployments = {}
    for name, options in code_options(args).items():
        merged = {**options, **entries.get(name, {})}
        merged.pop("name", None)
        if name not in FIXED_DEPLOYMENTS:
            user_config = merged.get("user_config") or old_batching or {}
            merged["user_config"] = EncoderConfig(**user_config).model_dump(mode="json")
        deployments[name] = merged
    rest = {key: value for key, value in app.items() if key not in ("args", "deployments")}
    return {**rest, "args": args.model_dump(mode="json"), "deployments": deployments}


def effective(config: dict) -> dict:
    apps = {app["name"]: effective_app(app) for app in config["applications"]}
    return {**{k: v for k, v in config.items() if k != "applications"}, "applications": apps}


def snapshot() -> dict[str, dict]:
    return yaml.safe_load(EFFECTIVE_SNAPSHOT.read_text())


class _PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors: Ray hands the same options dict to deployments built alike."""

    def ignore_aliases(self, data) -> bool:
        return True


def main() -> None:
    values = {name: effective(config) for name, config in deployed_configs().items()}
    EFFECTIVE_SNAPSHOT.parent.mkdir(exist_ok=True)
    EFFECTIVE_SNAPSHOT.write_text(
        "# Effective Serve configs (tests/support/serve_configs.py); regenerate on purpose only.\n"
        + yaml.dump(values, Dumper=_PlainDumper, sort_keys=True, width=100)
    )


if __name__ == "__main__":
    main()
