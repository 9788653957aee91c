"""The image a request stands for, encoded only when it is sent (see ``LazyImage``)."""

from __future__ import annotations

from defake_pipeline.imaging.encode import EncodedImage, EncodingPolicy, encode_as_is, encode_image
from defake_pipeline.imaging.probe import read_image_bytes
from defake_pipeline.records import ImageJob

# A file up to this size that can be sent as it is is encoded on the event loop (its header
# and base64: about 0.1 ms for 30 KB). A thread's round trip cost more than that: at 64
# requests in flight it was 3-4% of the client's CPU. Anything else is encoded in a thread.
INLINE_ENCODE_MAX_BYTES = 1 << 20


class LazyImage:
    """The image a prompt's ``{image_url}`` stands for, encoded only when a request is sent.

    Its cache token (sha256 + encoding policy) stands in for the data URL when the request
    is hashed, so a warm rerun finds its answers without reading any image.
    """

    def __init__(self, job: ImageJob, policy: EncodingPolicy):
        self.job = job
        self.policy = policy
        self._encoded: EncodedImage | None = None
        self._data: bytes | None = None  # read by encode_if_cheap for a thread to encode

    @property
    def token(self) -> str:
        return f"image:{self.job.key}:{self.policy.token}"

    def encoded(self) -> EncodedImage:
        if self._encoded is None:
            data, self._data = self._data or read_image_bytes(self.job.path), None
            self._encoded = encode_image(data, self.policy)
        return self._encoded

    def encode_if_cheap(self) -> bool:
        """Encode now when that needs no pixel work (a small file sent as it is); whether the
        image is encoded. The bytes read are kept for ``encoded()`` otherwise."""
        unread = self._encoded is None and self._data is None
        if unread and self.job.path.stat().st_size <= INLINE_ENCODE_MAX_BYTES:
            self._data = read_image_bytes(self.job.path)
            self._encoded = encode_as_is(self._data, self.policy)
            if self._encoded is not None:
                self._data = None
        return self._encoded is not None

    def data_url(self) -> str:
        return self.encoded().url

    @property
    def size(self) -> tuple[int, int]:
        return self.encoded().width, self.encoded().height


def lazy_images(messages: list[dict]) -> list[LazyImage]:
    """The LazyImages of rendered messages, in order."""
    return [
        part["image_url"]["url"]
        for msg in messages
        if isinstance(msg["content"], list)
        for part in msg["content"]
        if part["type"] == "image_url" and isinstance(part["image_url"]["url"], LazyImage)
    ]


def encode_images(images: list[LazyImage]) -> None:
    """Encode every image now (they stay in place in the messages until they are sent)."""
    for image in images:
        image.encoded()
