"""What a request may send: bounded bodies, JPEG or PNG only, a pixel limit, names as labels."""

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from conftest import jpeg, png_header, with_declared_size, without_scan_data
from shipseg.core.errors import RequestError
from shipseg.serve import uploads


def body_of(chunks, declared=None, limit=100, timeout=1.0, pause=0.0):
    async def stream():
        for chunk in chunks:
            # The behaviour under test, not a wait: a client this slow between its chunks.
            await asyncio.sleep(pause)
            yield chunk

    return asyncio.run(uploads.read_body(stream(), declared, limit, timeout))


def test_a_body_is_read_whole_within_its_limits():
    assert body_of([b"ab", b"cd"]) == b"abcd"


@pytest.mark.parametrize(
    ("chunks", "declared", "pause", "status"),
    [
        ([b"x" * 60, b"x" * 60], None, 0.0, 413),  # over the limit as it arrives
        ([b"x"], "101", 0.0, 413),  # over the limit as declared, refused before reading
        ([b"x", b"x"], None, 0.6, 408),  # slower than the timeout
        ([], None, 0.0, 400),  # empty
    ],
)
def test_a_body_over_its_limits_is_refused_with_the_status_that_names_why(
    chunks, declared, pause, status
):
    with pytest.raises(RequestError) as refused:
        body_of(chunks, declared, pause=pause)
    assert refused.value.status == status


def png(width=8, height=6) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_multipart_upload_gives_its_file_and_name_and_raw_bodies_pass_as_they_are():
    form = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png() + b"\r\n--b--\r\n"
    )
    assert uploads.image_bytes("multipart/form-data; boundary=b", form) == (png(), "a.png")
    assert uploads.image_bytes("image/jpeg", b"raw") == (b"raw", None)
    with pytest.raises(RequestError, match="unsupported Content-Type text/plain") as refused:
        uploads.image_bytes("text/plain", b"raw")
    assert refused.value.status == 415
    with pytest.raises(RequestError, match="holds no file"):
        uploads.image_bytes("multipart/form-data; boundary=b", b"--b--\r\n")


def test_an_image_is_checked_by_its_header_before_it_is_decoded():
    assert uploads.check_image(png(8, 6), max_pixels=48) == (6, 8)
    with pytest.raises(RequestError, match="8 x 6 pixels, over the limit of 47") as refused:
        uploads.check_image(png(8, 6), max_pixels=47)
    assert refused.value.status == 413
    with pytest.raises(RequestError, match="not a readable JPEG or PNG") as refused:
        uploads.check_image(b"<html>", max_pixels=100)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\x\\ship 1.jpg", "ship_1.jpg"),
        ("", "upload"),
        (None, "upload"),
        ("..", "upload"),
    ],
)
def test_an_uploaded_name_becomes_a_plain_label_never_a_path(name, label):
    assert uploads.safe_name(name) == label


def test_a_header_beyond_pillows_own_limit_is_refused_by_size_not_by_a_crash():
    with pytest.raises(RequestError, match="20000 x 30000 pixels, over the limit") as refused:
        uploads.check_image(png_header(20_000, 30_000), max_pixels=40_000_000)
    assert refused.value.status == 413


def test_a_multipart_upload_of_many_parts_is_refused_before_it_is_parsed():
    form = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n' for _ in range(50)
    )
    with pytest.raises(RequestError, match="at most 8 parts"):
        uploads.image_bytes("multipart/form-data; boundary=b", form + b"--b--\r\n")


@pytest.mark.parametrize(
    "data",
    [png_header(50_000, 50_000), with_declared_size(jpeg(), 50_000, 50_000)],
    ids=["PNG", "JPEG"],
)
def test_an_image_declaring_more_pixels_than_allowed_gets_413_naming_its_size(data):
    with pytest.raises(RequestError, match="50000 x 50000 pixels, over the limit") as refused:
        uploads.check_image(data, max_pixels=40_000_000)
    assert refused.value.status == 413


def test_an_oversized_header_is_refused_by_size_even_when_its_image_is_truncated():
    with pytest.raises(RequestError, match="50000 x 50000 pixels") as refused:
        uploads.check_image(with_declared_size(jpeg(), 50_000, 50_000)[:400], max_pixels=100)
    assert refused.value.status == 413


@pytest.mark.parametrize("keep_scan_header", [False, True], ids=["no scan", "an empty scan"])
def test_a_jpeg_without_scan_data_is_refused_with_400(keep_scan_header):
    data = without_scan_data(jpeg(), keep_scan_header)
    with pytest.raises(RequestError, match="the JPEG holds no image data") as refused:
        uploads.check_image(data, max_pixels=10_000)
    assert refused.value.status == 400


def test_a_truncated_jpeg_is_refused_with_400():
    with pytest.raises(RequestError, match="truncated JPEG") as refused:
        uploads.check_image(jpeg()[:-300], max_pixels=10_000)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "options",
    [{}, {"progressive": True}, {"restart_marker_blocks": 1, "comment": b"a comment"}],
    ids=["baseline", "progressive", "restart markers"],
)
def test_bytes_after_a_complete_jpegs_end_marker_are_accepted_as_decoders_accept_them(options):
    data = jpeg(**options)
    assert uploads.check_image(data + b"\x00trailing bytes\xff\xd8", max_pixels=10_000) == (48, 64)
    assert uploads.check_image(data, max_pixels=10_000) == (48, 64)


def test_a_png_without_image_data_is_refused_with_400():
    with pytest.raises(RequestError, match="the PNG holds no image data") as refused:
        uploads.check_image(png_header(8, 6), max_pixels=100)
    assert refused.value.status == 400
