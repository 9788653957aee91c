"""Response bodies read within a size limit, counted once inflated.

An answer is a few kilobytes; a gzip body of 3 MB on the wire can inflate to gigabytes. httpx
inflates a body whole and has no limit, so the client's response hook takes the decoding over:
it inflates gzip and deflate itself, a chunk at a time, and stops at the limit.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import httpx2

# Far above any answer (a completion with logprobs for every token is well under 1 MB).
MAX_RESPONSE_BYTES = 16 << 20
# zlib window bits: 47 reads a gzip or a zlib header; "deflate" may also come raw (-15), as
# httpx's own decoder allows.
_ENCODINGS = ("gzip", "x-gzip", "deflate")
_PIECE = 1 << 16


class RefusedBodyError(Exception):
    """A response body left unread: over the limit once inflated, or in an encoding not asked for.
    Not retried: the same request would bring the same body."""


class _BoundedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, encoding: str, limit: int, url: str):
        self.inner, self.encoding, self.limit, self.url = inner, encoding, limit, url

    def _check(self, total: int) -> None:
        if total > self.limit:
            raise RefusedBodyError(
                f"{self.url} sent a response body over {self.limit >> 20} MB once inflated; it was not read further"
            )

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        inflater = zlib.decompressobj(47) if self.encoding in _ENCODINGS else None
        first = True
        async for chunk in self.inner:
            if inflater is None:
                total += len(chunk)
                self._check(total)
                yield chunk
                continue
            if first and self.encoding == "deflate":
                try:
                    zlib.decompressobj(47).decompress(chunk, 1)
                except zlib.error:
                    inflater = zlib.decompressobj(-15)
            first = False
            data = chunk
            while True:
                # max_length bounds what one compressed chunk may become in memory; a full piece
                # may leave output pending, so the loop ends only on a short one with no input left.
                piece = inflater.decompress(data, _PIECE)
                data = inflater.unconsumed_tail
                total += len(piece)
                self._check(total)
                if piece:
                    yield piece
                if not data and len(piece) < _PIECE:
                    break
        if inflater is not None and (rest := inflater.flush()):
            self._check(total + len(rest))
            yield rest

    async def aclose(self) -> None:
        await self.inner.aclose()


def origin(url: httpx2.URL) -> str:
    """``scheme://host[:port]`` of a URL: never its userinfo, path or query, which may hold secrets."""
    return f"{url.scheme}://{url.host}{f':{url.port}' if url.port else ''}"


async def bound_response_body(response: httpx2.Response) -> None:
    """httpx response hook: the body is inflated here, within ``MAX_RESPONSE_BYTES``."""
    url = response.request.url
    where = origin(url) + url.path
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", *_ENCODINGS):
        raise RefusedBodyError(f"{where} sent a body in an encoding not asked for ({encoding})")
    assert isinstance(response.stream, httpx2.AsyncByteStream)
    response.stream = _BoundedBody(response.stream, encoding, MAX_RESPONSE_BYTES, where)
    # httpx must not inflate again what is inflated here.
    response.headers.pop("content-encoding", None)
