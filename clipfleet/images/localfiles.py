"""The local image files a CLI may read (`clipfleet score-csv`, `clipfleet batch`).

A CSV or table names image files, and whoever wrote it is not necessarily whoever runs the
command: `/proc/self/environ`, `~/.ssh/id_rsa` or `../../secrets` must not be uploaded to
`--url`, and `/dev/zero` or a named pipe must not hang the run. So a path is read only when it
resolves (`..` and symlinks followed) to a regular file under the image root, at most
`max_bytes` of it; anything else is that row's error, and the file is never opened. A path
starting with `~` is not expanded: it is refused like any other path outside the root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class ImageFileError(Exception):
    """Why a row's image file is not read (the row's error)."""

    def __init__(self, value: str, why: str) -> None:
        super().__init__(f"cannot read image file {value!r}: {why}")


def resolve_under(root: Path, value: str) -> Path:
    """The real path `value` names (relative to `root`), if it lies under `root`; else
    ImageFileError. Nothing is opened."""
    if value.startswith("~"):
        raise ImageFileError(value, f"'~' is not expanded; give a path under {root}")
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / value))  # an absolute value replaces the root
    if not real.is_relative_to(real_root):
        raise ImageFileError(value, f"it is outside the image root {root} (--image-root)")
    return real


def read_image_file(root: Path, value: str, max_bytes: int) -> bytes:
    """The bytes of the regular file `value` names under `root`, at most `max_bytes`."""
    path = resolve_under(root, value)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ImageFileError(value, "not a regular file")
        # O_NOFOLLOW / O_NONBLOCK: a symlink or a pipe swapped in since the check is refused
        # (fstat below) instead of followed or waited on
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise ImageFileError(value, "not found") from None
    except OSError as exc:
        raise ImageFileError(value, exc.strerror or type(exc).__name__) from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ImageFileError(value, "not a regular file")
        data = handle.read(max_bytes + 1)  # /proc files say 0 bytes: the read is what counts
    if len(data) > max_bytes:
        raise ImageFileError(value, f"larger than {max_bytes} bytes")
    return data
