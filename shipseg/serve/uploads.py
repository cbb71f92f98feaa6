"""What a request to the service may send: one image, bounded in bytes, pixels and time.

Every check answers a ``RequestError`` with the 4xx status that names the problem, before
anything is decoded: a body over the byte limit is cut off as it arrives (413), a client that
stops sending is dropped (408), a header that promises more pixels than allowed is refused
before the pixels exist (413: a decompression bomb), and only JPEG and PNG, the formats
``inference.py`` reads, get through (400 for anything else, truncated JPEGs included). The
image's name is a label for the answer only; no request can name a file on the server.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import re
from collections.abc import AsyncIterator

from shipseg.core.errors import RequestError
from shipseg.data import airbus

RAW_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
MULTIPART = "multipart/form-data"
MAX_PARTS = 8
CONTENT_TYPE_HELP = (
    "send the image as the body with Content-Type image/jpeg, image/png or "
    "application/octet-stream, or as a multipart/form-data upload (curl -F file=@image.jpg)"
)


async def read_body(
    chunks: AsyncIterator[bytes], declared: str | None, limit: int, timeout: float
) -> bytes:
    """The request body, refused beyond ``limit`` bytes or ``timeout`` seconds.

    Args:
        chunks: The body as it arrives (Starlette's ``request.stream()``).
        declared: The Content-Length header, if any (refused at once when over the limit).
        limit: Most bytes accepted.
        timeout: Seconds the whole body may take to arrive (a slow client holds a slot).
    """
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {declared} bytes, over the limit of {limit}")
    loop, body = asyncio.get_running_loop(), bytearray()
    deadline = loop.time() + timeout
    iterator = aiter(chunks)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(iterator), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise RequestError(408, f"the body did not arrive within {timeout:g} s") from None
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the body is over the limit of {limit} bytes")
    if not body:
        raise RequestError(400, "empty body: " + CONTENT_TYPE_HELP)
    return bytes(body)


def image_bytes(content_type: str | None, body: bytes) -> tuple[bytes, str | None]:
    """The uploaded image's bytes and its file name (multipart only), from a checked body."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in RAW_TYPES:
        return body, None
    if kind != MULTIPART:
        raise RequestError(415, f"unsupported Content-Type {kind or '(none)'}: {CONTENT_TYPE_HELP}")
    boundary = re.search(r'boundary="?([^";]+)"?', content_type or "")
    # The parser's memory grows with the number of parts, not only the bytes: one file is asked.
    if boundary is None or body.count(b"--" + boundary.group(1).encode()) > MAX_PARTS + 1:
        raise RequestError(
            400, f"a multipart upload needs a boundary and at most {MAX_PARTS} parts"
        )
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    parts = [part for part in message.iter_parts() if part.get_filename() or part.get_payload()]
    files = [part for part in parts if part.get_filename()] or parts
    if not message.is_multipart() or not files:
        raise RequestError(400, "the multipart upload holds no file")
    data = files[0].get_payload(decode=True) or b""
    if not data:
        raise RequestError(400, "the uploaded file is empty")
    return data, files[0].get_filename()


def check_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """The image's ``(height, width)`` from its header, once it is a complete JPEG or PNG.

    Raises:
        RequestError: 400 for anything but a complete JPEG or PNG, 413 beyond ``max_pixels``.
    """
    problem, size = airbus.inspect_image_bytes(data)
    if problem is not None:
        raise RequestError(400, f"the upload is not a usable image: {problem}")
    height, width = size
    if height * width > max_pixels:
        raise RequestError(
            413, f"the image is {width} x {height} pixels, over the limit of {max_pixels} pixels"
        )
    return height, width


def safe_name(name: str | None, default: str = "upload") -> str:
    """A label for the image in the answer: the file name's last part, plain characters only."""
    stem = re.split(r"[\\/]", name or "")[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:128].lstrip(".")
    return cleaned or default
