"""Response bodies read within a size limit, counted once inflated.

An answer is a few kilobytes; a gzip body of 3 MB on the wire can inflate to gigabytes. httpx
inflates a body whole and has no limit, so the client's response hook takes the decoding over:
it inflates gzip and deflate itself, a chunk at a time, and stops at the limit.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator

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


class _Inflation:
    """One body's decoding: gzip and deflate inflated a piece at a time, the total held to
    ``limit`` (None: no limit on the total; pieces stay bounded) and, where ``timeout_s`` is
    given, the body complete within it."""

    def __init__(self, encoding: str, limit: int | None, url: str, timeout_s: float | None = None):
        self.encoding, self.limit, self.url, self.timeout_s = encoding, limit, url, timeout_s
        self.deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        self.inflater = zlib.decompressobj(47) if encoding in _ENCODINGS else None
        self.total, self.first = 0, True

    def _count(self, piece: bytes) -> bytes:
        self.total += len(piece)
        if self.limit is not None and self.total > self.limit:
            raise RefusedBodyError(
                f"{self.url} sent a response body over {self.limit >> 20} MB once inflated; it was not read further"
            )
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RefusedBodyError(
                f"{self.url} sent no complete answer within {self.timeout_s:g} s; it was not read further"
            )
        return piece

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        if self.inflater is None:
            yield self._count(chunk)
            return
        if self.first and self.encoding == "deflate":
            try:
                zlib.decompressobj(47).decompress(chunk, 1)
            except zlib.error:
                self.inflater = zlib.decompressobj(-15)
        self.first = False
        data = chunk
        while True:
            # max_length bounds what one compressed chunk may become in memory; a full piece
            # may leave output pending, so the loop ends only on a short one with no input left.
            piece = self.inflater.decompress(data, _PIECE)
            data = self.inflater.unconsumed_tail
            if self._count(piece):
                yield piece
            if not data and len(piece) < _PIECE:
                break

    def finish(self) -> Iterator[bytes]:
        if self.inflater is not None and (rest := self.inflater.flush()):
            yield self._count(rest)


class _BoundedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, inflation: _Inflation):
        self.inner, self.inflation = inner, inflation

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            for piece in self.inflation.feed(chunk):
                yield piece
        for piece in self.inflation.finish():
            yield piece

    async def aclose(self) -> None:
        await self.inner.aclose()


class _BoundedSyncBody(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, inflation: _Inflation):
        self.inner, self.inflation = inner, inflation

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            yield from self.inflation.feed(chunk)
        yield from self.inflation.finish()

    def close(self) -> None:
        self.inner.close()


def origin(url: httpx2.URL) -> str:
    """``scheme://host[:port]`` of a URL: never its userinfo, path or query, which may hold secrets."""
    return f"{url.scheme}://{url.host}{f':{url.port}' if url.port else ''}"


def _inflation(response: httpx2.Response, limit: int | None, timeout_s: float | None) -> _Inflation:
    url = response.request.url
    where = origin(url) + url.path
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", *_ENCODINGS):
        raise RefusedBodyError(f"{where} sent a body in an encoding not asked for ({encoding})")
    # httpx must not inflate again what is inflated here.
    response.headers.pop("content-encoding", None)
    return _Inflation(encoding, limit, where, timeout_s)


async def bound_response_body(response: httpx2.Response) -> None:
    """httpx response hook: the body is inflated here, within ``MAX_RESPONSE_BYTES`` (the
    chat road's calls end within ``timeout_s`` by their own deadline)."""
    inflation = _inflation(response, MAX_RESPONSE_BYTES, None)
    assert isinstance(response.stream, httpx2.AsyncByteStream)
    response.stream = _BoundedBody(response.stream, inflation)


def bound_sync_response_body(timeout_s: float) -> Callable[[httpx2.Response], None]:
    """The same hook for a synchronous client (the Batch API's), which has no deadline of its
    own: an answer is complete within ``timeout_s`` of its headers. A file's content
    (``/files/{id}/content``) is inflated a piece at a time but bounded by its reader, which
    streams it line by line."""

    def hook(response: httpx2.Response) -> None:
        whole = not response.request.url.path.endswith("/content")
        inflation = _inflation(response, MAX_RESPONSE_BYTES if whole else None, timeout_s if whole else None)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        response.stream = _BoundedSyncBody(response.stream, inflation)

    return hook
