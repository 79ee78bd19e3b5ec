"""`clipfleet score-csv`: stream a CSV of (image, text) rows through /v1/score.

Memory is bounded by the concurrency window, not the CSV: rows are read as they are needed, an
image file is read (and base64-encoded) only when its request is about to be sent, and results
are written, in input order, as soon as the rows before them are done. At most `window` chunks
of `--batch-size` rows are in flight or waiting to be written.

Under load the client backs off: a 503 or 429 is retried up to `--retries` times, waiting the
server's Retry-After (capped at `--max-retry-wait`; exponential backoff without one), and every
request waits out the latest Retry-After, so the whole run slows down, not only one request.
"""

from clipfleet.scorecsv.client import AuthError
from clipfleet.scorecsv.rows import InputError
from clipfleet.scorecsv.run import score_csv

__all__ = ["AuthError", "InputError", "score_csv"]
