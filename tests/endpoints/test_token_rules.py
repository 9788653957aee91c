"""The client's token estimate and the test server's charge, each written on its own from
OpenAI's published rule, agree with that rule and with each other."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from defake_pipeline.endpoints.tokens import request_tokens
from defake_pipeline.testing.openai_rules import charged_tokens

# OpenAI's vision guide: 1024 × 1024 at detail high is 765 tokens (4 tiles); 2048 × 4096 is
# scaled to 1024 × 2048, then to 768 × 1536: 6 tiles, 1105 tokens. detail low is 85 whatever the size.
PUBLISHED = [((1024, 1024), "high", 765), ((2048, 4096), "high", 1105), ((4000, 3000), "low", 85)]
TEXT = "Is this image real or generated? Answer with one word. " * 7  # 392 characters: 98 tokens


def data_url(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def request(size: tuple[int, int], detail: str | None, max_tokens: int) -> dict:
    image: dict = {"url": data_url(size)}
    if detail:
        image["detail"] = detail
    content = [{"type": "text", "text": TEXT}, {"type": "image_url", "image_url": image}]
    return {
        "messages": [
            {"role": "system", "content": "You detect generated images."},
            {"role": "user", "content": content},
        ],
        "max_tokens": max_tokens,
    }


@pytest.mark.parametrize(("size", "detail", "image_tokens"), PUBLISHED)
def test_both_agree_with_the_published_examples(size, detail, image_tokens):
    body = request(size, detail, 300)
    text_tokens = -(-(len(TEXT) + len("You detect generated images.")) // 4)
    expected = image_tokens + text_tokens + 300
    client, server = request_tokens(body["messages"], body["max_tokens"]), charged_tokens(body)
    assert abs(client - expected) <= 0.05 * expected and abs(server - expected) <= 0.05 * expected
    assert abs(client - server) <= 0.05 * expected


@pytest.mark.parametrize("detail", ["high", "low", None])
@pytest.mark.parametrize("size", [(300, 200), (448, 448), (1600, 900), (3000, 4000), (5000, 600)])
def test_both_charge_the_same_requests_alike(size, detail):
    body = request(size, detail, 100)
    client, server = request_tokens(body["messages"], body["max_tokens"]), charged_tokens(body)
    assert abs(client - server) <= 0.05 * server, (client, server)


def test_each_self_hosted_preset_counts_its_images_by_its_own_patch():
    from defake_pipeline.endpoints.registry import get_model
    from defake_pipeline.endpoints.tokens import image_tokens

    assert {name: get_model(name).image_patch_px for name in ("qwen2vl", "internvl3", "onevision", "llama32vi")} == {
        "qwen2vl": 28, "internvl3": 28, "onevision": 14, "llama32vi": 14,
    }  # fmt: skip
    assert image_tokens(448, 448, None, 28) == 256 and image_tokens(448, 448, None, 14) == 1024
    assert image_tokens(448, 448, "high", 14) == image_tokens(448, 448, "high", 28) == 85 + 170  # OpenAI's tiles
