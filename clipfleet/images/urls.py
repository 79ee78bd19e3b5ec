"""Image URLs: well-formed absolute http(s) URLs only, checked before any lookup or connection.

A host must be an IP literal or a DNS name that a resolver can be asked about: at most 253
characters, labels of 1-63 letters, digits, `-` (not at either end) or `_`, and IDNA that
encodes (`xn--` labels that decode). Anything else would fail later, inside name resolution,
with whatever exception the codec raises (`http://a..b/`, `http://xn--/` and a 64-character
label raise UnicodeError there); here it is a 400 `invalid_url` saying what to fix.
"""

from __future__ import annotations

import ipaddress
import re

from yarl import URL

from clipfleet.errors import InvalidUrlError

SCHEMES = ("http", "https")
MAX_HOST_CHARS = 253
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def parse_image_url(text: str) -> URL:
    """`text` as a URL, or InvalidUrlError naming what is wrong with it."""
    try:
        url = URL(text)
        host = url.raw_host
        url.port  # noqa: B018 - an out-of-range port raises here
        url.host  # noqa: B018 - so does an xn-- label that is not valid punycode / IDNA
    except UnicodeError as exc:
        message = "the image url host is not a valid internationalised (IDNA, xn--) name"
        raise InvalidUrlError(message) from exc
    except (TypeError, ValueError) as exc:
        raise InvalidUrlError("the image url is not a valid url") from exc
    if not url.absolute or url.scheme not in SCHEMES or not host:
        raise InvalidUrlError("the image url must be an absolute http:// or https:// url")
    problem = host_problem(host)
    if problem is not None:
        raise InvalidUrlError(f"the image url host is not a valid host name: {problem}")
    return url


def host_problem(host: str) -> str | None:
    """What is wrong with a URL's host (its ASCII form, as yarl's `raw_host` gives it), or
    None for an IP literal or a well-formed DNS name."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if len(name) > MAX_HOST_CHARS:
        return f"longer than {MAX_HOST_CHARS} characters"
    for label in name.split("."):
        if not label:
            return "an empty label (two dots in a row, or a leading dot)"
        if len(label) > 63:
            return "a label longer than 63 characters"
        if not _LABEL.fullmatch(label.lower()):
            return (
                "a label with characters other than letters, digits, '-' or '_', or one "
                "that starts or ends with '-'"
            )
    try:
        name.encode("idna")  # what name resolution does with it
    except UnicodeError:
        return "a label that IDNA cannot encode"
    return None
