"""OpenAI's published rules as the test server applies them: what a request is charged, and how
a per-minute limit is enforced.

They are written here from the rules themselves, not taken from the client's code, so that a
wrong estimate on either side makes the two disagree and a test fail.

- **Tokens charged to a limit** (OpenAI's rate-limit guide): the prompt, estimated at about
  4 characters of text a token, plus each image, plus the whole output allowance
  (``max_tokens`` or ``max_completion_tokens``), charged up front.
- **Images** (OpenAI's vision guide, gpt-4o and 4.1): ``detail: low`` costs 85 tokens. Otherwise
  the image is scaled to fit in 2048 × 2048, then so that its shortest side is 768 px (never
  enlarged), and costs 170 tokens per 512-px tile it covers, plus 85. Open models served by vLLM
  (Qwen2-VL and its kin, sent no ``detail``) spend a token per 28 × 28-px patch.
- **Per-minute limits** are enforced over short spans: a limit of N a minute lets N / 60 through
  in any second. Modelled here by the generic cell rate algorithm (GCRA): each unit pushes a
  theoretical arrival time on by 60 / N s, and a request goes only while that time stays within
  one second of now.
"""

from __future__ import annotations

import base64
import io
import math
import time

from PIL import Image

CHARS_PER_TOKEN = 4
LOW_DETAIL_TOKENS = 85
TILE_PX, TILE_TOKENS, BASE_TOKENS = 512, 170, 85
PATCH_PX = 28


def image_pixels(url: str) -> tuple[int, int]:
    """The size of a data-URL image, from its own bytes; a remote URL counts as one tile."""
    if not url.startswith("data:"):
        return (TILE_PX, TILE_PX)
    with Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))) as img:
        return img.size


def image_charge(width: int, height: int, detail: str | None) -> int:
    if detail == "low":
        return LOW_DETAIL_TOKENS
    if detail is None:
        return -(-width // PATCH_PX) * -(-height // PATCH_PX)
    fit = min(1.0, 2048 / width, 2048 / height)
    w, h = width * fit, height * fit
    short = min(1.0, 768 / min(w, h))
    w, h = w * short, h * short
    return BASE_TOKENS + TILE_TOKENS * math.ceil(w / TILE_PX) * math.ceil(h / TILE_PX)


def input_tokens(body: dict) -> int:
    """The input tokens of a chat-completions request body: its text and its images."""
    total = text = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        parts: list = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts:
            if part.get("type") == "text":
                text += len(part.get("text") or "")
            elif part.get("type") == "image_url":
                image = part.get("image_url") or {}
                total += image_charge(*image_pixels(image.get("url") or ""), image.get("detail"))
    return total + -(-text // CHARS_PER_TOKEN)


def charged_tokens(body: dict) -> int:
    """What a tokens-per-minute limit charges for a chat-completions request body: its input and
    its whole output allowance."""
    allowance = body.get("max_completion_tokens", body.get("max_tokens"))
    return input_tokens(body) + (allowance if isinstance(allowance, int) else 0)


def openai_duration(seconds: float) -> str:
    """A reset time as OpenAI's headers write it: "20ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


class MinuteLimit:
    """A per-minute limit enforced over one-second spans, by GCRA (see the module's notes)."""

    def __init__(self, per_minute: float):
        self.per_minute = per_minute
        self.unit_s = 60.0 / per_minute  # how far one unit pushes the theoretical arrival time
        self.tolerance_s = max(1.0, self.unit_s)  # one second's share, and at least one unit
        self.tat = time.monotonic()

    def wait_s(self, amount: float) -> float:
        """Seconds until ``amount`` may go (0: now). One dearer than a whole second's share goes
        once nothing else is outstanding."""
        now = time.monotonic()
        cost_s = amount * self.unit_s
        return max(0.0, max(self.tat, now) + cost_s - now - max(self.tolerance_s, cost_s))

    def take(self, amount: float) -> None:
        self.tat = max(self.tat, time.monotonic()) + amount * self.unit_s

    def remaining(self) -> int:
        return max(0, math.floor((self.tolerance_s - max(0.0, self.tat - time.monotonic())) / self.unit_s))

    def reset_s(self) -> float:
        return max(0.0, self.tat - time.monotonic())
