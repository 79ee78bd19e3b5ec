"""Wait until URLs answer 200, bounded: `make loadtest` runs it before starting its clients.

    python -m loadtests.wait_ready URL [URL ...] [--timeout 60]

Exits 0 as soon as every URL has answered 200, 1 (naming the ones that did not) at the deadline.
"""

from __future__ import annotations

import argparse
import sys
import time

import requests


def wait_ready(urls: list[str], timeout_s: float, interval_s: float = 0.2) -> list[str]:
    """The URLs still not answering 200 at the deadline (empty: all ready)."""
    waiting = list(urls)
    deadline = time.monotonic() + timeout_s
    while waiting:
        for url in list(waiting):
            try:
                if requests.get(url, timeout=min(5.0, max(interval_s, timeout_s))).ok:
                    waiting.remove(url)
            except requests.RequestException:
                pass
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    return waiting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    missing = wait_ready(args.urls, args.timeout)
    for url in missing:
        print(f"not ready after {args.timeout:g} s: {url}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
