"""The one estimate of a request's tokens, as OpenAI's rate limiter counts them: the prompt
from its characters (4 to a token) and its images (by the model's own rule), plus the output
allowance (``max_tokens``), charged up front whatever the answer's length. The pacer, the
spending limit and the cost of an answer whose usage is missing all use it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from defake_pipeline.imaging.encode import data_url_size

# OpenAI's rule for gpt-4o and 4.1 (tile-based models): the image is fitted in 2048x2048, its
# short side scaled to 768, then cut into 512-pixel tiles of 170 tokens each, plus 85.
_TILE, _TILE_TOKENS, _BASE_TOKENS, _LOW_DETAIL_TOKENS = 512, 170, 85, 85
# Self-hosted vision transformers (Qwen2-VL and its kin) spend a token per 28x28 patch, unless
# their preset says otherwise (``ModelSpec.image_patch_px``).
DEFAULT_PATCH_PX = 28


def image_tokens(width: int, height: int, detail: str | None, patch_px: int = DEFAULT_PATCH_PX) -> int:
    """Tokens an image costs: OpenAI's tile rule when ``detail`` is set, else one per patch."""
    if detail == "low":
        return _LOW_DETAIL_TOKENS
    if detail:
        scale = min(1.0, 2048 / max(width, height))
        scale *= min(1.0, 768 / (min(width, height) * scale))
        return _BASE_TOKENS + _TILE_TOKENS * math.ceil(width * scale / _TILE) * math.ceil(height * scale / _TILE)
    return math.ceil(width / patch_px) * math.ceil(height / patch_px)


def request_tokens(messages: Iterable[dict], max_tokens: int, patch_px: int = DEFAULT_PATCH_PX) -> int:
    """Tokens a rate limiter charges for a chat request: text at 4 characters a token, each
    image by ``image_tokens``, and the output allowance."""
    chars, tokens = 0, max_tokens
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
            continue
        for part in content or ():
            if part.get("type") == "text":
                chars += len(part.get("text") or "")
            elif part.get("type") == "image_url":
                image = part["image_url"]
                tokens += image_tokens(*image_size(image["url"]), image.get("detail"), patch_px)
    return tokens + math.ceil(chars / 4)


def image_size(url: Any) -> tuple[int, int]:
    """Pixels of an image URL value: an image encoded when sent knows its size; a data URL is read."""
    size = getattr(url, "size", None)
    if size is not None:
        return size
    if isinstance(url, str) and url.startswith("data:"):
        return data_url_size(url)
    return (512, 512)  # a remote URL: the provider fetches it; one tile's worth is the guess
