"""One hostile corpus: every request the hardening suite throws at clipfleet, as data.

Each `Attack` (tests/support/attacks.py) is one request and the answer it must get: its status,
its envelope's `type` (and `param`, where the corpus pins it), and text the answer must never
hold (an echo of what was sent, a library's words). tests/unit/api/test_hostile_corpus.py replays
every attack against the in-process app; tests/integration/test_faults.py replays those marked
`serve` against a real Serve; after a replay a normal request must still succeed. Nothing here
may answer a 5xx except an upstream image that never finishes (504 upstream_timeout: the
fetch's own deadline).

Adding a case is adding one entry to ATTACKS. A body may name `{hostile}`: the base URL of
tests.support.hostile.HostileServer, which serves the hostile images (hostile_corpus(), the
streamed cases and the decode bombs of tests/support/bombs.py).
"""

from __future__ import annotations

import base64

from tests.support.attacks import ADDRESS_KINDS, Attack, letters, url_safe_image, values_bomb
from tests.support.hostile import STREAMED_CASES, hostile_corpus
from tests.support.images import image_base64, image_bytes

# What no answer may hold, whatever was asked: tracebacks and the libraries' own words.
IMAGE = {"base64": image_base64()}
LONG_WORDS = [letters(1000, seed) for seed in range(64)]
WIDE_LABELS = [letters(200, seed) for seed in range(256)]
UPLOAD = {"image": ("a.jpg", image_bytes(), "image/jpeg")}


# Malformed image URLs (issue 23, item 2): each a 400 invalid_url before any lookup; they used
# to fail inside name resolution as a 500 (tests/unit/rollout/test_blame.py replays them at a
# canary).
INVALID_HOSTS = [
    "http://a..b/x.jpg",
    "http://xn--/x.jpg",
    "http://xn--zz.example/x.jpg",
    f"http://{'a' * 64}.example/x.jpg",
    "http://-lead.example/x.jpg",
    "http://exa%20mple.example/x.jpg",
    "http://a.b:99999/x.jpg",
]


def _invalid_url(name: str, url: str, serve: bool = False) -> Attack:
    body = {"images": [{"url": url}]}
    return Attack(name, "/v1/embed/image", 400, "invalid_url", "images[0]", json=body, serve=serve)


def _refused_url(name: str, url: str, serve: bool = False) -> Attack:
    body = {"images": [{"url": url}]}
    return Attack(
        name,
        "/v1/embed/image",
        403,
        "forbidden_url",
        "images[0]",
        json=body,
        absent=ADDRESS_KINDS,
        serve=serve,
    )


def _image_case(name: str, status: int, error_type: str | None) -> Attack:
    """A hostile image (tests.support.hostile) fetched beside a good one: its own envelope."""
    path = name if name in STREAMED_CASES else f"case/{name}"
    body = {"images": [IMAGE, {"url": f"{{hostile}}/{path}"}]}
    param = "images[1]" if status != 200 else None
    return Attack(
        f"image_{name}", "/v1/embed/image", status, error_type, param, json=body, serve=True
    )


ATTACKS: list[Attack] = [
    # -- texts: bounded work, bounded sizes --------------------------------------------------
    Attack("text_64_long_words", "/v1/embed/text", 200, json={"texts": LONG_WORDS}, serve=True),
    Attack(
        "embeddings_64_long_words",
        "/v1/embeddings",
        200,
        json={"model": "fast", "input": LONG_WORDS},
    ),
    Attack(
        "text_over_max_chars",
        "/v1/embed/text",
        422,
        "invalid_request",
        "texts[0]",
        json={"texts": ["x" * 1001]},
    ),
    Attack(
        "texts_over_max_items",
        "/v1/embed/text",
        413,
        "payload_too_large",
        "texts",
        json={"texts": ["a cat"] * 65},
        serve=True,
    ),
    Attack("texts_not_strings", "/v1/embed/text", 422, "invalid_request", json={"texts": [1, 2]}),
    Attack(
        "embeddings_token_arrays",
        "/v1/embeddings",
        422,
        "invalid_request",
        json={"model": "fast", "input": [[1, 2, 3]]},
    ),
    Attack(
        "embeddings_dimensions_true",
        "/v1/embeddings",
        422,
        "invalid_request",
        "dimensions",
        json={"model": "fast", "input": "a cat", "dimensions": True},
        serve=True,
    ),
    Attack(
        "embed_text_dimensions_true",
        "/v1/embed/text",
        422,
        "invalid_request",
        "dimensions",
        json={"texts": ["a cat"], "dimensions": True},
    ),
    Attack(
        "rerank_64_long_word_documents",
        "/v1/rerank",
        200,
        json={"model": "fast", "query": "a cat", "documents": LONG_WORDS, "modality": "text"},
    ),
    Attack(
        "rerank_document_over_max_chars",
        "/v1/rerank",
        422,
        "invalid_request",
        "documents[1]",
        json={"model": "fast", "query": "a", "documents": ["a", "x" * 1001], "modality": "text"},
    ),
    # -- tag prompts: rendered prompts obey the text limits, one budget per request -----------
    Attack(
        "tag_template_amplification",
        "/v1/tag",
        422,
        "invalid_request",
        "prompt_template",
        json={"image": IMAGE, "labels": WIDE_LABELS, "prompt_template": "{label}" * 71 + "abc"},
        serve=True,
    ),
    Attack(
        "tag_prompt_budget",
        "/v1/tag",
        413,
        "payload_too_large",
        "labels",
        json={"image": IMAGE, "labels": WIDE_LABELS, "prompt_template": "{label}, {label}"},
    ),
    Attack(
        "tag_too_many_labels",
        "/v1/tag",
        413,
        "payload_too_large",
        "labels",
        json={"image": IMAGE, "labels": ["a"] * 257},
    ),
    Attack(
        "tag_label_too_long",
        "/v1/tag",
        422,
        "invalid_request",
        "labels[0]",
        json={"image": IMAGE, "labels": ["x" * 201]},
    ),
    Attack(
        "tag_template_without_slot",
        "/v1/tag",
        422,
        "invalid_request",
        "prompt_template",
        json={"image": IMAGE, "labels": ["cat"], "prompt_template": "a photo"},
    ),
    Attack(
        "tag_upload_1mib_template",
        "/v1/tag/upload",
        422,
        "invalid_request",
        "prompt_template",
        files=UPLOAD,
        form={"prompt_template": "{label}" * 149_796, "labels": WIDE_LABELS[:2]},
        serve=True,
    ),
    Attack(
        "tag_upload_500kb_profile",
        "/v1/tag/upload",
        422,
        "invalid_request",
        "profile",
        files=UPLOAD,
        form={"profile": "p" * 500_000},
        absent=("p" * 64,),
        serve=True,
    ),
    Attack(
        "tag_upload_label_too_long",
        "/v1/tag/upload",
        422,
        "invalid_request",
        "labels[0]",
        files=UPLOAD,
        form={"labels": ["x" * 201]},
    ),
    Attack(
        "tag_upload_too_many_labels",
        "/v1/tag/upload",
        413,
        "payload_too_large",
        "labels",
        files=UPLOAD,
        form={"labels": ["a"] * 257},
    ),
    Attack(
        "score_upload_text_too_long",
        "/v1/score/upload",
        422,
        "invalid_request",
        "pairs[0]",
        files=UPLOAD,
        form={"text": "x" * 1001},
    ),
    Attack(
        "seed001_500kb_model_config_name",
        "/evaluator/v1/evaluation/single",
        422,
        "invalid_request",
        "model_config_name",
        json={
            "image_input": "http://example.com/a.jpg",
            "text_prompt": "x",
            "model_config_name": "m" * 500_000,
        },
        absent=("m" * 64,),
    ),
    Attack(
        "embed_upload_bad_profile",
        "/v1/embed/image/upload",
        422,
        "invalid_request",
        "profile",
        files=UPLOAD,
        form={"profile": "Not A Profile!"},
    ),
    # -- bodies: refused before they are parsed, in our words ---------------------------------
    Attack(
        "json_values_31mb",
        "/v1/embed/text",
        413,
        "payload_too_large",
        content=values_bomb(31_500_000),
        content_type="application/json",
    ),
    Attack(
        "json_values_7mb",
        "/v1/embed/text",
        413,
        "payload_too_large",
        content=values_bomb(7_000_000),
        content_type="application/json",
        serve=True,
    ),
    Attack(
        "json_invalid",
        "/v1/embed/text",
        400,
        "invalid_json",
        content=b'{"texts": [',
        content_type="application/json",
    ),
    Attack("json_not_an_object", "/v1/embed/text", 422, "invalid_request", json=[1, 2]),
    Attack(
        "json_huge_integer",
        "/v1/tag",
        400,
        "invalid_request",
        content=b'{"image": {"url": "x"}, "top_k": ' + b"9" * 5000 + b"}",
        content_type="application/json",
    ),
    Attack(
        "json_extra_field",
        "/v1/embed/text",
        422,
        "invalid_request",
        "x",
        json={"texts": ["a"], "x": 1},
    ),
    Attack(
        "multipart_without_boundary",
        "/v1/tag/upload",
        400,
        "invalid_request",
        content=b"--x\r\n",
        content_type="multipart/form-data",
        serve=True,
    ),
    Attack("unknown_route", "/v1/nothing", 404, "not_found", method="GET", absent=("Not Found",)),
    Attack("wrong_method", "/v1/embed/text", 405, "method_not_allowed", method="GET"),
    Attack(
        "route_key_too_long",
        "/v1/embed/text",
        422,
        "invalid_request",
        json={"texts": ["a"]},
        headers={"X-Clipfleet-Route-Key": "k" * 300},
    ),
    Attack(
        "unknown_variant",
        "/v1/embed/text",
        422,
        "invalid_request",
        "X-Clipfleet-Variant",
        json={"texts": ["a"]},
        headers={"X-Clipfleet-Variant": "nope"},
    ),
    # -- inline images --------------------------------------------------------------------------
    Attack(
        "base64_garbage",
        "/v1/embed/image",
        400,
        "invalid_request",
        "images[0]",
        json={"images": [{"base64": "@@not base64@@"}]},
    ),
    Attack(
        "base64_over_max_bytes",
        "/v1/embed/image",
        413,
        "payload_too_large",
        "images[0]",
        json={"images": [{"base64": "A" * (28 * 1024 * 1024)}]},
    ),
    Attack(
        "base64_mime_line_breaks",
        "/v1/embed/image",
        200,
        json={"images": [{"base64": base64.encodebytes(image_bytes()).decode()}]},
        serve=True,
    ),
    Attack(
        "base64_url_safe", "/v1/embed/image", 200, json={"images": [{"base64": url_safe_image()}]}
    ),
    Attack(
        "image_url_and_base64",
        "/v1/embed/image",
        422,
        "invalid_request",
        "images[0]",
        json={"images": [{"url": "http://example.com/a.jpg", "base64": "AAAA"}]},
    ),
    # -- image URLs: the SSRF policy's own refusals, all alike -----------------------------------
    _refused_url("url_decimal_ipv4", "http://2130706433/a.jpg", serve=True),
    _refused_url("url_hex_ipv4", "http://0x7f.1/a.jpg"),
    _refused_url("url_octal_ipv4", "http://0177.0.0.1/a.jpg"),
    _refused_url("url_short_ipv4", "http://127.1/a.jpg"),
    _refused_url("url_loopback_v6", "http://[::1]:80/a.jpg", serve=True),
    _refused_url("url_private", "http://10.0.0.1/a.jpg", serve=True),
    _refused_url("url_metadata", "http://169.254.169.254/latest/meta-data/", serve=True),
    _refused_url("url_azure_wireserver", "http://168.63.129.16/machine"),
    _refused_url("url_eks_pod_identity", "http://169.254.170.23/v1/credentials"),
    _refused_url("url_eks_pod_identity_v6", "http://[fd00:ec2::23]/v1/credentials"),
    _refused_url("url_ipv4_compatible_metadata", "http://[::169.254.169.254]/"),
    _refused_url("url_nat64_metadata", "http://[64:ff9b::a9fe:a9fe]/", serve=True),
    _refused_url("url_nat64_private", "http://[64:ff9b::a00:1]/"),
    _refused_url("url_port_22", "http://example.com:22/a.jpg"),
    _invalid_url("url_ftp", "ftp://example.com/a.jpg"),
    _invalid_url("url_file", "file:///etc/passwd"),
    *(
        _invalid_url(f"url_invalid_host_{index}", url, serve=index == 0)
        for index, url in enumerate(INVALID_HOSTS)
    ),
    # -- hostile images, fetched (tests.support.hostile), and two decode bombs -------------------
    *(
        _image_case(name, case.status, case.error_type)
        for name, case in {**hostile_corpus(), **STREAMED_CASES}.items()
    ),
    *(
        Attack(
            f"bomb_{name}",
            "/v1/embed/image",
            200,
            json={"images": [{"url": f"{{hostile}}/bomb/{name}"}]},
        )
        for name in ("webp_animated", "gif_disposed")
    ),
]
