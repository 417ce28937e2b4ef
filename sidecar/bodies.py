"""Reading answers from local services (the agent, the task metadata) with a size limit.

Their answers are a few hundred bytes to a few KiB; anything far larger is not them,
and is refused before it is buffered. JSON nested too deep to parse is refused too.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

MAX_ANSWER_BYTES = 64 * 1024


class TooLargeError(ValueError):
    """The answer is larger than the limit."""


async def read_capped(response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The body, refusing to hold more than `limit` bytes in memory."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"the answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(payload: bytes) -> dict[str, Any] | None:
    """The JSON object in `payload`, or None if it is not one (or is nested absurdly)."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None
