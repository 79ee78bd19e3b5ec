"""The `clipfleet` command: `clipfleet score-csv INPUT.csv` (seed 001's evaluation CLI).

Reads rows of (image, text) from a CSV, scores them through a running clipfleet's /v1/score
with bounded concurrency, and writes INPUT_with_scores.csv: the input columns plus
`clip_score` and `error` (empty when the row scored), in input order. A failed row is reported
and the rest go on. The CSV is streamed: memory depends on --concurrency and --batch-size, not
on the number of rows. 503 and 429 answers are retried (Retry-After honoured, --retries at
most); --resume continues after the rows an interrupted run already wrote. Requests are sent as
`X-Clipfleet-Priority: bulk` (--priority interactive asks for more, capped by the key's class):
a CSV run never slows interactive users (docs/fleet.md#priority-classes). With --compare half
the images (by a hash of the image reference) are scored one pair per request ("single") and
the other half --batch-size pairs per request ("batch"), so neither mode is answered from the
other's embedding cache, and both throughputs are printed.

Columns (first match, case-insensitive): image = image_input, image_url, url, image,
image_path, path; text = text_prompt, caption, text, prompt. An image starting with http://
or https:// is sent as {"url": ...}; anything else is a local file, sent as base64, read only
if it is a regular file under --image-root (default: the CSV's folder; relative paths start
there) of at most --max-image-bytes: any other path (outside the root through `..`, `~`, an
absolute path or a symlink; a pipe, a device) is that row's error and is never opened. Output
cells that a spreadsheet would run as a formula (starting with =, +, -, @, a tab or a carriage
return, other than plain numbers) are written with a leading `'` (OWASP, CSV injection).

Exit status: 0 when every row scored, 1 when some rows failed, 2 on usage or input errors or a
refused API key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clipfleet.scorecsv import AuthError, InputError, score_csv
from clipfleet.scorecsv.rows import MAX_IMAGE_BYTES

API_KEY_ENV = "CLIPFLEET_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipfleet", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score-csv", help="add a clip_score column to a CSV")
    score.add_argument("input", type=Path, help="CSV with an image column and a text column")
    score.add_argument("--url", default="http://127.0.0.1:8000", help="clipfleet base URL")
    score.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    score.add_argument("--profile", default=None, help="profile (fast, accurate); server default")
    score.add_argument("--batch-size", type=int, default=16, help="pairs per batch request")
    score.add_argument("--compare", action="store_true", help="time single vs batch requests")
    score.add_argument("--output", type=Path, default=None, help="default INPUT_with_scores.csv")
    score.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    score.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"sent as `Authorization: Bearer`; default ${API_KEY_ENV}",
    )
    score.add_argument(
        "--priority",
        choices=["bulk", "interactive"],
        default="bulk",
        help="X-Clipfleet-Priority sent (capped by the key's class); default bulk",
    )
    score.add_argument("--retries", type=int, default=5, help="retries of a 503/429 request")
    score.add_argument(
        "--max-retry-wait", type=float, default=30.0, help="cap on one wait (Retry-After), s"
    )
    score.add_argument(
        "--resume", action="store_true", help="keep the rows already in --output, do the rest"
    )
    score.add_argument(
        "--image-root",
        type=Path,
        default=None,
        help="local images are read only under this folder (default: the CSV's)",
    )
    score.add_argument(
        "--max-image-bytes",
        type=int,
        default=MAX_IMAGE_BYTES,
        help="largest local image file sent (default: the service's fetch.max_bytes)",
    )
    commands.add_parser(
        "key-id", help="print the id of the API key read from stdin (for auth.priorities)"
    )
    from clipfleet.batch.command import add_batch_parser

    add_batch_parser(commands)  # `clipfleet batch {embed,score,tag}`: docs/batch.md
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "batch":
        from clipfleet.batch.command import run_batch

        return run_batch(args)
    if args.command == "key-id":  # read from stdin: a key on the command line leaks to history
        from clipfleet.api.middleware.auth import key_id

        print(key_id(sys.stdin.readline().strip()))
        return 0
    try:
        return score_csv(args)
    except (InputError, AuthError) as exc:
        print(f"clipfleet: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
