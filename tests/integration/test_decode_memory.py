"""24 concurrent decode bombs of every kind (tests/support/bombs.py's MIXED: progressive, CMYK
and YCCK JPEGs, an animated WebP, a disposed GIF, BMP RLE, a one-strip TIFF, a 49 MP RGBA PNG)
through a real Serve app: every one answers 200 within the default deadline, and the
ImageFetcher replica's memory stays under 2 GiB (its decode budget matches the decoders)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests
from ray import serve

from clipfleet.config import ApiLimits, FetchLimits
from tests.support.bombs import MIXED
from tests.support.serve_apps import APP_NAME

CONCURRENT = 24
RSS_LIMIT = 2 * 1024**3
# What decoding may add to the replica's RSS: the budget (512 MiB) plus the one decode over it
# that runs alone (~750 MiB, the 7000 x 7000 animated WebP) and allocator slack. Both bounds
# hold: the replica no longer imports torch (it idled at 842-1,084 MiB with it, ~220 without).
RSS_GROWTH_LIMIT = int(1.15 * 2**30)


def _sample_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        stop.wait(0.05)


def test_concurrent_bombs_answer_within_the_deadline_in_bounded_memory(app_url, hostile):
    fetcher = serve.get_deployment_handle("ImageFetcher", app_name=APP_NAME)
    before = fetcher.memory.remote().result(timeout_s=30)
    assert before["decode_budget_bytes"] == FetchLimits().decode_budget_bytes
    stop, sampled = threading.Event(), [before["rss_bytes"]]
    sampler = threading.Thread(target=_sample_rss, args=(before["pid"], stop, sampled))
    sampler.start()
    deadline_s = ApiLimits().request_timeout_s

    def post(index: int) -> tuple[int, float, str]:
        body = {"images": [{"url": f"{hostile.base_url}/bomb/{MIXED[index % len(MIXED)]}"}]}
        started = time.monotonic()
        response = requests.post(f"{app_url}/v1/embed/image", json=body, timeout=deadline_s + 30)
        return response.status_code, time.monotonic() - started, response.text[:300]

    try:
        with ThreadPoolExecutor(CONCURRENT) as pool:
            results = list(pool.map(post, range(CONCURRENT)))
    finally:
        stop.set()
        sampler.join(5)
    after = fetcher.memory.remote().result(timeout_s=30)
    assert after["pid"] == before["pid"], "the ImageFetcher replica restarted"
    peak = max(sampled[0], after["peak_rss_bytes"])
    print(
        f"\nImageFetcher pid {after['pid']}: RSS before {before['rss_bytes'] / 2**20:.0f} MiB, "
        f"sampled peak {sampled[0] / 2**20:.0f} MiB, process peak (ru_maxrss) "
        f"{after['peak_rss_bytes'] / 2**20:.0f} MiB; slowest request "
        f"{max(elapsed for _, elapsed, _ in results):.1f} s"
    )
    assert [status for status, _, _ in results] == [200] * CONCURRENT, results
    assert all(elapsed < deadline_s for _, elapsed, _ in results), results
    growth = peak - before["rss_bytes"]
    assert growth < RSS_GROWTH_LIMIT, f"decoding added {growth / 2**20:.0f} MiB to the ImageFetcher"
    assert peak < RSS_LIMIT, f"ImageFetcher peaked at {peak / 2**20:.0f} MiB"
    assert after["decode_bytes_in_use"] == 0
