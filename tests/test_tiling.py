"""Large scenes (shipseg.predict.tiling): tiles that cover, blending that agrees with the whole image, a
ship cut by a tile border kept as one, and ``inference.py`` on a scene above the limit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from conftest import inference_command, run
from shipseg.core import errors
from shipseg.predict import tiling
from shipseg.scoring import metrics as scoring
from shipseg.scoring import ships


def local_model(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in network that, like a U-Net, looks at a neighbourhood (7 x 7) of each pixel."""
    red = images[..., 0] / 255.0
    probabilities = np.stack([ndimage.uniform_filter(image, 7, mode="reflect") for image in red])
    return probabilities.astype(np.float32), probabilities.reshape(len(images), -1).max(axis=1)


@pytest.mark.parametrize(
    "length, tile, overlap", [(100, 32, 8), (64, 32, 0), (33, 32, 16), (20, 32, 8)]
)
def test_tiles_cover_the_scene_and_the_last_one_is_flush(length, tile, overlap):
    starts = tiling.tile_starts(length, tile, overlap)
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all() and starts[0] == 0
    assert starts[-1] + min(tile, length) == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_an_overlap_as_large_as_the_tile_is_refused():
    with pytest.raises(ValueError, match="overlap"):
        tiling.tile_starts(100, 32, 32)


def test_weights_fall_towards_shared_borders_and_stay_whole_on_the_scenes():
    weights = tiling.tile_weights(slice(0, 32), slice(20, 52), (32, 100), 8)
    assert weights.shape == (32, 32) and weights.min() > 0
    np.testing.assert_array_equal(weights[:, 8:24], 1)  # the middle, and rows on the scene's edge
    assert weights[16, 0] < weights[16, 4] < weights[16, 8]  # falling towards the left neighbour


def test_tiled_probabilities_agree_with_the_whole_image():
    rng = np.random.default_rng(0)
    scene = (rng.random((150, 230, 3)) * 255).astype(np.uint8)
    whole, whole_ship = local_model(scene[None].astype(np.float32))
    tiled, tiled_ship = tiling.predict_scene(local_model, scene, tile=64, overlap=16, batch_size=3)
    assert tiled.shape == scene.shape[:2]
    # A tile's border pixels see padding instead of their neighbours; the blend gives them
    # little weight where another tile sees them whole.
    assert np.abs(tiled - whole[0]).max() < 0.02
    assert np.abs(tiled - whole[0]).mean() < 0.002
    assert tiled_ship == pytest.approx(float(whole_ship[0]), abs=0.02)


def test_a_ship_cut_by_tile_borders_comes_out_as_one_ship():
    scene = np.zeros((120, 200, 3), dtype=np.uint8)
    scene[50:58, 20:180, 0] = 255  # 160 x 8 pixels: crosses several 64-pixel tiles
    probabilities, _ = tiling.predict_scene(local_model, scene, tile=64, overlap=16)
    config = scoring.PostprocessConfig(threshold=0.5, image_threshold=0, min_ship_pixels=0)
    labels = scoring.probabilities_to_ships(probabilities, config)
    records = ships.ship_records("scene.png", labels, probabilities)
    assert len(records) == 1
    assert records[0].length_px == pytest.approx(160, abs=2)
    assert records[0].width_px == pytest.approx(8, abs=2)


def doubting_model(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels light up on red (ships) and blue (quays); the ship head trusts only red."""
    red, blue = images[..., 0] / 255.0, images[..., 2] / 255.0
    probabilities = np.stack([ndimage.uniform_filter(p, 7) for p in np.maximum(red, blue)])
    ships = np.stack([ndimage.uniform_filter(r, 7) for r in red]).reshape(len(images), -1)
    return probabilities.astype(np.float32), ships.max(axis=1)


def test_tiles_the_ship_head_doubts_add_nothing_and_ships_seen_by_open_tiles_stay_whole():
    scene = np.zeros((64, 176, 3), dtype=np.uint8)  # tiles at columns 0, 48, 96 and 112
    scene[28:36, 30:80, 0] = 255  # a ship across the first two tiles' shared border
    scene[10:50, 150:176, 2] = 255  # a quay, in the last two tiles only
    gated, ship = tiling.predict_scene(doubting_model, scene, tile=64, overlap=16, gate=0.5)
    ungated, _ = tiling.predict_scene(doubting_model, scene, tile=64, overlap=16)
    assert ungated[20:40, 155:170].min() > 0.9 and gated[:, 100:].max() == 0
    np.testing.assert_array_equal(gated[:, :90], ungated[:, :90])
    config = scoring.PostprocessConfig(threshold=0.5, image_threshold=0, min_ship_pixels=0)
    labels = scoring.probabilities_to_ships(gated, config, ship)
    records = ships.ship_records("scene.png", labels, gated)
    assert len(records) == 1 and records[0].length_px == pytest.approx(50, abs=2)


@pytest.mark.slow
def test_inference_tiles_a_scene_above_the_limit_and_writes_it_whole(
    trained_project, synthetic_dataset, tmp_path
):
    project, _ = trained_project
    images = sorted((Path(synthetic_dataset) / "train_v2").glob("*.jpg"))[:6]
    tiles = [np.asarray(Image.open(path).convert("RGB")) for path in images]
    scene = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], axis=1)])
    Image.fromarray(scene).save(tmp_path / "scene.png")
    Image.fromarray(tiles[0]).save(tmp_path / "small.png")
    out = tmp_path / "out"
    command = inference_command(
        project.parent, str(tmp_path / "scene.png"), str(tmp_path / "small.png")
    )
    tile_options = ["--tile-above", "100", "--tile", "64", "--overlap", "16"]
    result = run([*command, "--out", str(out), *tile_options, "--threshold", "0.005"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tile" in result.stderr  # the scene's progress bar counts tiles
    mask = np.asarray(Image.open(out / "masks" / "scene.png"))
    assert mask.shape == scene.shape[:2]
    assert np.asarray(Image.open(out / "overlays" / "scene.png")).shape == scene.shape[:2]
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert set(submission.ImageId) == {"scene.png", "small.png"}
    assert (submission[submission.ImageId == "scene.png"].EncodedPixels != "").sum() == len(
        np.unique(mask[mask > 0])
    )


@pytest.mark.slow
def test_bad_tile_options_are_one_line(trained_project, synthetic_dataset, tmp_path):
    project, _ = trained_project
    image = str(next((Path(synthetic_dataset) / "test_v2").glob("*.jpg")))
    result = run([*inference_command(project.parent, image), "--tile", "64", "--overlap", "64"])
    assert result.returncode == 2
    assert "--overlap must be in [0, --tile)" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "tile, tile_above, overlap, error",
    [
        (0, 100, 0, "--tile must be at least 1"),
        (64, 0, 16, "--tile-above must be at least 1"),
        (64, 100, 64, "--overlap must be in [0, --tile)"),
        (64, 100, -1, "--overlap must be in [0, --tile)"),
    ],
)
def test_scene_options_out_of_range_are_refused_naming_the_option(tile, tile_above, overlap, error):
    with pytest.raises(errors.UserError, match=re.escape(error)):
        tiling.check_scene_options(tile, tile_above, overlap)
    tiling.check_scene_options(64, 100, 63)  # in range: no error
