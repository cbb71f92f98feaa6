"""Pictures (shipseg.predict.drawing): PNG encoding, inference overlays, the training figures' overlay."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from shipseg.predict import drawing


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize("strategy", [zlib.Z_RLE, zlib.Z_HUFFMAN_ONLY, zlib.Z_DEFAULT_STRATEGY])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (64, 33), (1, 9, 3), (31, 2, 3), (48, 64, 3)])
def test_png_encoding_is_lossless(shape, strategy):
    picture = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    picture[: shape[0] // 2] = 7  # runs, for the run-length strategy
    data = drawing.encode_png(picture, strategy=strategy)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode(data), picture)


def test_png_encoding_compresses_smooth_pictures_and_rejects_other_pixels():
    gradient = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    assert len(drawing.encode_png(np.dstack([gradient] * 3))) < gradient.size // 20
    with pytest.raises(ValueError, match="uint8"):
        drawing.encode_png(gradient.astype(np.float32))
    with pytest.raises(ValueError, match="channels"):
        drawing.encode_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="at least one pixel"):
        drawing.encode_png(np.zeros((0, 4), np.uint8))


def test_palette_png_decodes_to_the_palette_colours():
    palette = np.array([[0, 0, 0], [255, 0, 0], [10, 20, 30]], np.uint8)
    indices = np.array([[0, 1, 2], [2, 2, 1]], np.uint8)
    decoded = Image.open(io.BytesIO(drawing.encode_png(indices, palette)))
    assert decoded.mode == "P"
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), palette[indices])
    with pytest.raises(ValueError, match="palette"):
        drawing.encode_png(np.zeros((2, 2, 3), np.uint8), palette)


def test_inference_overlay_shows_the_image_in_grey_and_the_ships_in_red():
    image = np.zeros((4, 6, 3), np.float32)
    image[:, :3] = [200, 200, 200]  # bright left half
    image[:, 3:] = [0, 0, 255]  # dark blue right half
    ships = np.zeros((4, 6), bool)
    ships[1, 1:5] = True
    picture = drawing.OVERLAY_PALETTE[drawing.overlay_indices(image, ships)]
    sea, ship = picture[~ships], picture[ships]
    assert (sea[:, 0] == sea[:, 1]).all() and (sea[:, 1] == sea[:, 2]).all(), "sea not grey"
    assert (ship[:, 0] > 140).all() and (ship[:, 0] > 2 * ship[:, 1]).all(), "ships not red"
    assert (ship[:, 1] == ship[:, 2]).all()
    # Brightness survives: bright sea stays brighter than dark sea, under ships too.
    assert picture[0, 0, 0] > picture[0, 5, 0] + 100 and picture[1, 1, 1] > picture[1, 4, 1]


def test_saved_png_is_written_atomically_and_reads_back(tmp_path):
    picture = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    drawing.save_png(tmp_path / "a" / "picture.png", picture)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "picture.png")), picture)
    assert [path.name for path in (tmp_path / "a").iterdir()] == ["picture.png"]


def test_overlay_colours_ships_and_leaves_the_sea_alone():
    image = np.full((6, 8, 3), 100, np.uint8)
    truth, predicted = np.zeros((6, 8), bool), np.zeros((6, 8), bool)
    truth[1, 1:3] = True
    predicted[1, 2:4] = True
    overlay = drawing.mask_overlay(image, truth, predicted)
    assert overlay.dtype == np.uint8 and overlay.shape == image.shape
    red, green, yellow, sea = overlay[1, 3], overlay[1, 1], overlay[1, 2], overlay[4, 4]
    assert red[0] > 150 and red[1] < 50 and green[1] > 150 and green[0] < 50
    assert yellow[0] > 150 and yellow[1] > 150
    np.testing.assert_array_equal(sea, [100, 100, 100])
    assert (image == 100).all(), "the input image was changed"
    # Float images in 0-255 (as the input pipeline gives them) give the same picture.
    np.testing.assert_array_equal(
        drawing.mask_overlay(image.astype(np.float32), truth, predicted), overlay
    )
    np.testing.assert_array_equal(drawing.mask_overlay(image, None, None), image)


def test_downscaled_overlay_keeps_thin_ships_visible():
    image = np.zeros((64, 64, 3), np.uint8)
    predicted = np.zeros((64, 64), bool)
    predicted[10, 5:40] = True  # one pixel wide
    overlay = drawing.mask_overlay(image, None, predicted, max_side=16)
    assert overlay.shape == (16, 16, 3)
    assert (overlay[2, 1:10, 0] > 100).all() and overlay[8:, :, 0].max() == 0
