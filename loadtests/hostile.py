"""What hostile-but-valid requests cost `make run`'s config (issue 23).

    python -m loadtests.hostile [--config serve_config.yaml] [--out results/hostile.json]
                                                                       # or: make hostile

Starts its own local Ray + Serve with the config (random weights, HTTP on a free loopback
port). The decode bombs are image URLs served by a loopback server, so the config's fetch
allow-list is widened to reach it (127.0.0.1/32 and its port); nothing else is changed. Then,
one after another, each once the app is idle again (a small request answers within 1 s):

1. tokenizer: 64 distinct 1,000-letter words to /v1/embed/text and, 0.3 s later, one small
   image to /v1/embed/image (both pinned to the stable variant of the default profile): both
   latencies, beside the small image's latency alone;
2. decode bombs: 24 concurrent /v1/embed/image requests, each the URL of one of the mixed
   bombs of tests/support/bombs.py: statuses and the ImageFetcher replicas' peak RSS (sampled
   every 50 ms);
3. tag prompts, JSON: /v1/tag with a 500-character template of `{label}` x 71 and 256 labels of
   200 characters: status, latency, and the RSS growth (peak over before) of the Ingress
   replicas and of the fast profile's encoders;
4. tag prompts, multipart: /v1/tag/upload with a 1 MiB template and two 200-character labels:
   the same;
5. a JSON body of 31.5 MB of `{},` (under limits.max_body_bytes) to /v1/embed/text: status,
   latency, the Ingress replicas' RSS growth.

`--attacks tokenizer,bombs,tag_json,tag_upload,json_bomb` runs some of them (default: all).

Bounded: every request has a timeout, every wait a deadline. Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import requests
import yaml

from loadtests.overload import emit, free_port
from loadtests.wait_ready import wait_ready
from tests.support.bombs import MIXED
from tests.support.images import image_bytes

ROOT = Path(__file__).resolve().parents[1]
PINNED = {"X-Clipfleet-Variant": "stable"}
CONCURRENT_BOMBS = 24
TIMEOUT_S = 90


def letters(count: int, rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(count))


def small_image(seed: int) -> str:
    return base64.b64encode(image_bytes(96, 72, seed=seed)).decode()


class RssSampler:
    """Peak RSS of the processes whose command line names `role` (a Serve replica's title,
    e.g. ServeReplica:clipfleet:Ingress), sampled every 50 ms in a thread."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.peaks: dict[int, int] = {}
        self.before = {pid: rss for pid, rss in self._sample().items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, int]:
        found = {}
        for process in psutil.process_iter(["pid", "cmdline"]):
            try:
                if self.role in " ".join(process.info["cmdline"] or ()):
                    found[process.pid] = process.memory_info().rss
            except psutil.Error:
                continue
        return found

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for pid, rss in self._sample().items():
                self.peaks[pid] = max(rss, self.peaks.get(pid, 0))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def report(self) -> dict:
        after = self._sample()
        mib = 2**20
        return {
            "replicas": len(self.peaks),
            "rss_before_mib": {p: round(r / mib) for p, r in self.before.items()},
            "rss_peak_mib": {p: round(r / mib) for p, r in self.peaks.items()},
            "rss_after_mib": {p: round(r / mib) for p, r in after.items()},
            "max_growth_mib": round(
                max((r - self.before.get(p, r) for p, r in self.peaks.items()), default=0) / mib
            ),
            "max_peak_mib": round(max(self.peaks.values(), default=0) / mib),
        }


def timed_post(url: str, **kwargs) -> dict:
    started = time.monotonic()
    try:
        response = requests.post(url, timeout=TIMEOUT_S, **kwargs)
    except requests.RequestException as exc:
        return {"status": 0, "seconds": round(time.monotonic() - started, 2), "error": str(exc)}
    answer = {"status": response.status_code, "seconds": round(time.monotonic() - started, 2)}
    if response.status_code != 200:
        answer["error"] = response.text[:200]
    return answer


def wait_idle(url: str, timeout_s: float = 240) -> float:
    """Seconds until a one-text request answers within 1 s (the encoders are free again)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        body = {"texts": [f"a photo of a cat {time.monotonic()}"]}
        if timed_post(f"{url}/v1/embed/text", json=body, headers=PINNED)["seconds"] < 1.0:
            return round(time.monotonic() - started, 1)
    return -1.0


def cpu_seconds(title: str) -> float:
    """User + system CPU seconds of the processes titled exactly `title` (all their threads)."""
    total = 0.0
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(part.endswith(title) for part in process.info["cmdline"] or ()):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def tokenizer_attack(url: str, seed: int) -> dict:
    rng = random.Random(seed)
    encoder = "ServeReplica:clipfleet:clip_fast"  # the stable variant, pinned
    cpu_before = cpu_seconds(encoder)
    alone = timed_post(
        f"{url}/v1/embed/image", json={"images": [{"base64": small_image(seed)}]}, headers=PINNED
    )
    texts = {"texts": [letters(1000, rng) for _ in range(64)]}
    image = {"images": [{"base64": small_image(seed + 1)}]}
    with ThreadPoolExecutor(2) as pool:
        attack = pool.submit(timed_post, f"{url}/v1/embed/text", json=texts, headers=PINNED)
        time.sleep(0.3)
        beside = pool.submit(timed_post, f"{url}/v1/embed/image", json=image, headers=PINNED)
        answers = {"attack": attack.result(), "image_beside": beside.result()}
    cpu = round(cpu_seconds(encoder) - cpu_before, 2)
    return {"image_alone": alone, **answers, "encoder_cpu_s_attack_and_image": cpu}


def json_bomb(url: str) -> dict:
    body = b'{"texts": [' + b"{}," * ((31_500_000 - 16) // 3) + b"{}]}"
    with RssSampler("ServeReplica:clipfleet:Ingress") as ingress:
        headers = {"content-type": "application/json"}
        answer = timed_post(f"{url}/v1/embed/text", data=body, headers=headers)
        time.sleep(2)
    return {**answer, "body_bytes": len(body), "ingress": ingress.report()}


def bomb_attack(url: str, bomb_base: str) -> dict:
    def post(index: int) -> dict:
        name = MIXED[index % len(MIXED)]
        body = {"images": [{"url": f"{bomb_base}/{name}"}]}
        return {"bomb": name, **timed_post(f"{url}/v1/embed/image", json=body)}

    fetchers = RssSampler("ServeReplica:clipfleet:ImageFetcher")
    with fetchers, ThreadPoolExecutor(CONCURRENT_BOMBS) as pool:
        answers = list(pool.map(post, range(CONCURRENT_BOMBS)))
    statuses: dict[str, int] = {}
    for answer in answers:
        statuses[str(answer["status"])] = statuses.get(str(answer["status"]), 0) + 1
    return {
        "statuses": statuses,
        "slowest_s": max(a["seconds"] for a in answers),
        "errors": [a for a in answers if a["status"] != 200][:8],
        "fetcher": fetchers.report(),
    }


def tag_attack(url: str, upload: bool) -> dict:
    rng = random.Random(7 if upload else 5)
    image = image_bytes(96, 72, seed=11)
    ingress = RssSampler("ServeReplica:clipfleet:Ingress")
    encoders = RssSampler("ServeReplica:clipfleet:clip_fast")
    with ingress, encoders:
        if upload:
            template = ("{label}" * (1024 * 1024 // 7 + 1))[: 1024 * 1024]
            form = [("prompt_template", template)] + [("labels", letters(200, rng))] * 2
            files = {"image": ("a.jpg", image, "image/jpeg")}
            answer = timed_post(f"{url}/v1/tag/upload", data=form, files=files)
        else:
            body = {
                "image": {"base64": base64.b64encode(image).decode()},
                "labels": [letters(200, rng) for _ in range(256)],
                "prompt_template": "{label}" * 71 + "abc",
            }
            answer = timed_post(f"{url}/v1/tag", json=body)
        time.sleep(2)  # what the ingress still holds once it has answered
    return {**answer, "ingress": ingress.report(), "fast_encoders": encoders.report()}


def serve_bombs() -> tuple[ThreadingHTTPServer, int]:
    from tests.support.decode_peaks import bomb_bytes

    bodies = {name: bomb_bytes(name) for name in MIXED}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies.get(self.path.strip("/"))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


def start_app(config: Path, http_port: int, bomb_port: int) -> None:
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    document = yaml.safe_load(config.read_text())
    document["http_options"] = {"host": "127.0.0.1", "port": http_port, "request_timeout_s": 60}
    for app in document["applications"]:
        fetch = app["args"].setdefault("fetch", {})
        fetch["allow_private_networks"] = [*fetch.get("allow_private_networks", []), "127.0.0.1/32"]
        fetch["allowed_ports"] = [*fetch.get("allowed_ports", [80, 443]), bomb_port]
    ray.init(include_dashboard=False, log_to_driver=False)  # the machine's cores, like `make run`
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(document))


ATTACKS = ("tokenizer", "bombs", "tag_json", "tag_upload", "json_bomb")


def run(config: Path, attacks: tuple[str, ...] = ATTACKS) -> dict:
    os.environ["CLIPFLEET_RANDOM_WEIGHTS"] = "1"
    server, bomb_port = serve_bombs()
    http_port = free_port()
    url = f"http://127.0.0.1:{http_port}"
    report: dict = {"config": str(config)}
    try:
        start_app(config, http_port, bomb_port)
        if wait_ready([f"{url}/readyz"], timeout_s=600, interval_s=2):
            raise RuntimeError(f"{url} not ready within 600 s")
        report["warm_up_s"] = wait_idle(url)
        runs = {
            "tokenizer": lambda: [tokenizer_attack(url, seed) for seed in (1, 2, 3)],
            "bombs": lambda: bomb_attack(url, f"http://127.0.0.1:{bomb_port}"),
            "tag_json": lambda: tag_attack(url, upload=False),
            "tag_upload": lambda: tag_attack(url, upload=True),
            "json_bomb": lambda: json_bomb(url),
        }
        for name in attacks:
            report[name] = runs[name]()
            report[f"idle_after_{name}_s"] = wait_idle(url)
    finally:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        server.shutdown()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    options = parser.parse_args()
    emit(run(options.config, tuple(options.attacks.split(","))), options.out)


if __name__ == "__main__":
    main()
