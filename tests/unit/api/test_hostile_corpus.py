"""The hostile corpus (tests/support/hostile_corpus.py) against the in-process app: every attack
gets its own answer and envelope, never a library's words, and the app stays healthy after."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from clipfleet.api.app import create_app
from tests.support.attacks import as_httpx, check_answer
from tests.support.hostile_corpus import ATTACKS
from tests.support.images import image_base64
from tests.support.local_dag import build_local_service, loopback_fetch, tiny_app_args

BY_NAME = {attack.name: attack for attack in ATTACKS}


@pytest.fixture(scope="module")
def client(model_dir):
    # a short fetch deadline: the slow-drip image answers 504 in seconds, not ten
    service = build_local_service(tiny_app_args(model_dir, fetch=loopback_fetch(timeout_s=1.5)))
    with TestClient(create_app(service)) as test_client:
        yield test_client


def test_names_are_unique():
    assert len(BY_NAME) == len(ATTACKS)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_each_attack_gets_its_answer(client, hostile, name):
    attack = BY_NAME[name]
    response = client.request(**as_httpx(attack.request(hostile.base_url)))
    is_json = response.headers.get("content-type", "").startswith("application/json")
    check_answer(attack, response.status_code, response.text, response.json() if is_json else None)


def test_the_app_is_healthy_after_the_corpus(client, hostile):
    for attack in ATTACKS:  # once more, back to back
        client.request(**as_httpx(attack.request(hostile.base_url)))
    assert client.get("/readyz").status_code == 200
    normal = client.post("/v1/embed/image", json={"images": [{"base64": image_base64()}]})
    assert normal.status_code == 200 and len(normal.json()["embeddings"]) == 1
    text = client.post("/v1/embed/text", json={"texts": ["a photo of a cat"]})
    assert text.status_code == 200
