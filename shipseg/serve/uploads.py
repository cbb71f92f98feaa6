"""What a request to the service may send: one image, bounded in bytes, pixels and time.

Every check answers a ``RequestError`` with the 4xx status that names the problem, before
anything is decoded: a body over the byte limit is cut off as it arrives (413), a client that
stops sending is dropped (408), a header that promises more pixels than allowed is refused
before the pixels exist (413: a decompression bomb, whatever else is wrong with it), and only
complete JPEGs and PNGs, the formats ``inference.py`` reads, get through (400 for anything
else: a JPEG cut before its end marker, or one with no image data). The image's name is a
label for the answer only; no request can name a file on the server.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import re
from collections.abc import AsyncIterator

from shipseg.core.errors import RequestError

RAW_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
MULTIPART = "multipart/form-data"
MAX_PARTS = 8
CONTENT_TYPE_HELP = (
    "send the image as the body with Content-Type image/jpeg, image/png or "
    "application/octet-stream, or as a multipart/form-data upload (curl -F file=@image.jpg)"
)

JPEG_START = b"\xff\xd8\xff"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG markers: the frame headers that give the size, and those without a length field.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SCAN, _END = 0xDA, 0xD9
# The end of a scan's entropy-coded data: a marker, not a stuffed 0xFF00 nor a restart.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


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

    The size is read first, from the header alone (no decoder sees a larger image than
    ``max_pixels``), then the structure: a JPEG needs image data (a scan) and its end marker
    (bytes after it are ignored, as decoders ignore them), a PNG its image data.

    Raises:
        RequestError: 413 beyond ``max_pixels``, 400 for anything but a complete JPEG or PNG.
    """
    if data.startswith(JPEG_START):
        size, problem = _read_jpeg(data)
    elif data.startswith(PNG_SIGNATURE):
        size, problem = _read_png(data)
    else:
        size, problem = None, "not a readable JPEG or PNG image"
    if size is not None and size[0] * size[1] > max_pixels:
        height, width = size
        raise RequestError(
            413, f"the image is {width} x {height} pixels, over the limit of {max_pixels} pixels"
        )
    if size is None or 0 in size:
        problem = problem or "its header declares no image size"
    if problem is not None:
        raise RequestError(400, f"the upload is not a usable image: {problem}")
    return size


def _read_jpeg(data: bytes) -> tuple[tuple[int, int] | None, str | None]:
    """A JPEG's declared ``(height, width)`` (None if none) and its problem (None if none).

    Walks the segments from the start marker: a frame header (SOFn) gives the size; a scan
    (SOS) is followed by its entropy-coded data up to the next marker; the end marker (EOI)
    ends the image.
    """
    size, scans, position = None, 0, 2
    while position + 2 <= len(data):
        if data[position] != 0xFF:
            return size, "damaged JPEG (no marker where a segment starts)"
        marker = data[position + 1]
        if marker == _END:
            return size, None if scans else "the JPEG holds no image data (no scan)"
        if marker == 0xFF or marker in _JPEG_STANDALONE:  # a fill byte, or no length follows
            position += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in _JPEG_FRAMES and length >= 7 and position + 9 <= len(data):
            size = (
                int.from_bytes(data[position + 5 : position + 7], "big"),
                int.from_bytes(data[position + 7 : position + 9], "big"),
            )
        position += 2 + max(length, 2)
        if marker == _SCAN:
            found = _NEXT_MARKER.search(data, position)
            if found is None:
                break
            scans += found.start() > position  # a scan without data adds no pixels
            position = found.start()
    return size, "truncated JPEG (no end marker)"


def _read_png(data: bytes) -> tuple[tuple[int, int] | None, str | None]:
    """A PNG's declared ``(height, width)`` (None if none) and its problem (None if none)."""
    if data[12:16] != b"IHDR" or len(data) < 24:
        return None, "damaged PNG (no IHDR header)"
    size = (int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"))
    position = 8
    while position + 8 <= len(data):
        kind = data[position + 4 : position + 8]
        if kind == b"IDAT":
            return size, None
        if kind == b"IEND":
            break
        position += 12 + int.from_bytes(data[position : position + 4], "big")
    return size, "the PNG holds no image data (no IDAT chunk)"


def safe_name(name: str | None, default: str = "upload") -> str:
    """A label for the image in the answer: the file name's last part, plain characters only."""
    stem = re.split(r"[\\/]", name or "")[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:128].lstrip(".")
    return cleaned or default
