"""The peers' SDKs sending through a TestClient, and what to compare their answers with."""

from __future__ import annotations

import cohere
import httpx
import numpy as np
import openai

from tests.support.images import image_base64


def cohere_over(client: httpx.Client) -> cohere.ClientV2:
    """The SDK sending through `client` (a TestClient: the app, no socket between)."""
    return cohere.ClientV2(
        api_key="unused", base_url=str(client.base_url), httpx_client=client, max_retries=0
    )


def data_url(seed: int) -> str:
    return "data:image/jpeg;base64," + image_base64(seed=seed)


def native(client, path: str, body: dict) -> tuple[np.ndarray, str]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"], np.float32), response.json()["embedding_space"]


def sdk_over(client: httpx.Client, api_key: str = "unused") -> openai.OpenAI:
    """The SDK sending through `client` (a TestClient: the app, with no socket between)."""
    base_url = f"{client.base_url}/v1"
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, http_client=client)


def vectors(result) -> np.ndarray:
    assert [item.index for item in result.data] == list(range(len(result.data)))
    return np.asarray([item.embedding for item in result.data], dtype=np.float32)
