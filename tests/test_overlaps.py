"""Overlapping tiles (shipseg.data.overlaps) and splits that keep their groups whole (shipseg.data.splits).

The tiles are cut, as the Airbus tiles were, on a 256-pixel grid from larger generated scenes
with known offsets, and saved as JPEGs: every true overlap is known.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from shipseg.data import overlaps, splits

TILE = overlaps.TILE


def scene(seed: int, blocks: int = 5) -> np.ndarray:
    """A textured RGB scene: smooth land and sea of several scales, with a few bright ships."""
    rng = np.random.default_rng(seed)
    size = blocks * overlaps.BLOCK
    field = sum(
        ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma) * sigma * 6
        for sigma in (4, 16, 48)
    )
    rgb = np.stack([field * k for k in (1.0, 0.9, 0.8)], axis=-1) + 110
    for _ in range(12):
        row, column = rng.integers(0, size - 40, 2)
        rgb[row : row + 8, column : column + 30] = 230
    return np.clip(rgb, 0, 255).astype(np.uint8)


def open_water(seed: int) -> np.ndarray:
    """A tile of calm sea: one colour and fine noise, like thousands of Airbus tiles."""
    rng = np.random.default_rng(seed)
    sea = np.array([38, 62, 80]) + rng.normal(0, 1.5, (TILE, TILE, 1))
    return np.clip(sea, 0, 255).astype(np.uint8)


def save_jpeg(array: np.ndarray, path) -> str:
    Image.fromarray(array).save(path, quality=80)
    return str(path)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """Tiles of two scenes at known offsets, one unrelated scene's tile and open water."""
    folder = tmp_path_factory.mktemp("tiles")
    ids, paths, origins = [], [], {}
    offsets = [(0, 0), (0, 256), (256, 512), (512, 0), (512, 512), (0, 512)]
    for scene_index in (0, 1):
        image = scene(scene_index)
        for row, column in offsets:
            name = f"s{scene_index}_{row}_{column}.jpg"
            tile = image[row : row + TILE, column : column + TILE]
            paths.append(save_jpeg(tile, folder / name))
            ids.append(name)
            origins[name] = (scene_index, row, column)
    for index in range(4):
        ids.append(f"water_{index}.jpg")
        paths.append(save_jpeg(open_water(10 + index), folder / ids[-1]))
    ids.append("other.jpg")
    paths.append(save_jpeg(scene(7, blocks=3), folder / "other.jpg"))
    return ids, paths, origins


def true_overlaps(origins: dict) -> dict:
    """Every pair of tiles of one scene whose squares intersect: {(a, b): (rows, columns)}."""
    pairs = {}
    for a, b in itertools.combinations(sorted(origins), 2):
        (scene_a, row_a, col_a), (scene_b, row_b, col_b) = origins[a], origins[b]
        if scene_a == scene_b and abs(row_a - row_b) < TILE and abs(col_a - col_b) < TILE:
            pairs[a, b] = (row_b - row_a, col_b - col_a)
    return pairs


def test_every_overlap_is_found_with_its_shift_and_nothing_else(tiles):
    ids, paths, origins = tiles
    found = overlaps.find_overlaps(ids, paths, log=lambda message: None)
    got = {
        tuple(sorted((row.first, row.second))): (
            (row.shift_rows, row.shift_columns)
            if row.first < row.second
            else (-row.shift_rows, -row.shift_columns)
        )
        for row in found.itertuples()
    }
    assert got == true_overlaps(origins)


def test_open_water_alone_finds_no_overlap(tmp_path):
    paths = [save_jpeg(open_water(seed), tmp_path / f"w{seed}.jpg") for seed in range(6)]
    found = overlaps.find_overlaps([f"w{seed}" for seed in range(6)], paths, log=print)
    assert found.empty


def test_groups_are_the_connected_tiles_of_each_scene(tiles):
    ids, paths, origins = tiles
    found = overlaps.find_overlaps(ids, paths, log=lambda message: None)
    groups = overlaps.overlap_groups(ids, found)
    for a, b in itertools.combinations(range(len(ids)), 2):
        same_scene = ids[a] in origins and ids[b] in origins
        same_scene = same_scene and origins[ids[a]][0] == origins[ids[b]][0]
        assert (groups[a] == groups[b]) == same_scene
    description = overlaps.describe_groups(groups)
    assert description == {
        "images": len(ids),
        "groups": 2 + 5,
        "groups_of_several": 2,
        "images_in_groups_of_several": 12,
        "largest_group": 6,
    }


def test_descriptions_come_from_the_cache_until_a_file_changes(tiles, tmp_path, monkeypatch):
    ids, paths, _ = tiles
    cache = tmp_path / "cache.npz"
    first = overlaps.describe_images(paths[:3], cache)
    described = []
    original = overlaps.describe_image
    monkeypatch.setattr(
        overlaps, "describe_image", lambda path: described.append(path) or original(path)
    )
    np.testing.assert_array_equal(overlaps.describe_images(paths[:3], cache), first)
    assert described == []
    changed = tmp_path / "changed.jpg"
    save_jpeg(open_water(99), changed)
    overlaps.describe_images([*paths[:3], str(changed)], cache)
    assert described == [str(changed)]


def test_an_unreadable_image_is_reported_compared_with_nothing_and_not_cached(tiles, tmp_path):
    ids, paths, _ = tiles
    broken, cache = tmp_path / "broken.jpg", tmp_path / "cache.npz"
    broken.write_bytes(b"not a jpeg")
    for _ in range(2):  # reported again on the second run: it was not cached as described
        messages = []
        found = overlaps.find_overlaps(
            [*ids[:2], "broken.jpg"], [*paths[:2], broken], cache, log=messages.append
        )
        assert len(found) == 1
        assert len(messages) == 1 and messages[0].startswith(str(broken))


def test_the_cache_keeps_what_other_projects_on_the_folder_described(tiles, tmp_path):
    _, paths, _ = tiles
    cache = tmp_path / "cache.npz"
    overlaps.describe_images(paths[:2], cache)
    overlaps.describe_images(paths[2:4], cache)
    with np.load(cache) as data:
        assert len(data["keys"]) == 4


def grouped_table(count: int = 90, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "ImageId": [f"{index:04d}.jpg" for index in range(count)],
            "ship_count": rng.choice([0, 0, 0, 1, 2, 3], count),
        }
    )
    groups = np.minimum(np.arange(count) // 3, rng.integers(0, count, count))
    _, groups = np.unique(groups, return_inverse=True)
    return table, groups


def test_a_grouped_split_never_divides_a_group():
    table, groups = grouped_table()
    split = splits.make_split(table, 0.2, 0.2, seed=1, groups=groups)
    by_group = split.groupby("group").split.nunique()
    assert (by_group == 1).all() and (np.bincount(groups) > 1).sum() > 5
    assert set(split.split) == {"train", "val", "test"}


def test_without_overlaps_the_split_and_folds_are_the_image_wise_ones():
    table, _ = grouped_table()
    singletons = np.arange(len(table))
    plain, grouped = (
        splits.make_split(table, seed=3),
        splits.make_split(table, seed=3, groups=singletons),
    )
    pd.testing.assert_frame_equal(plain, grouped)
    pd.testing.assert_series_equal(
        splits.make_folds(table, 4, seed=3), splits.make_folds(table, 4, seed=3, groups=singletons)
    )


def test_grouped_folds_keep_each_group_in_one_fold():
    table, groups = grouped_table()
    folds = splits.make_folds(table, 5, seed=2, groups=groups)
    frame = pd.DataFrame({"fold": folds.to_numpy(), "group": groups})
    assert (frame.groupby("group").fold.nunique() == 1).all()
    assert sorted(frame.fold.unique()) == [0, 1, 2, 3, 4]


def test_a_split_saved_before_groups_loads_with_one_group_per_image_and_says_so(tmp_path, capsys):
    path = tmp_path / "split.csv"
    path.write_text("ImageId,split\na.jpg,train\nb.jpg,val\nc.jpg,test\n")
    assert splits.load_split(path).group.tolist() == [0, 1, 2]
    assert "overlapping tiles were not looked for" in capsys.readouterr().err


def test_the_real_sample_has_the_known_overlaps_and_a_split_that_keeps_them_together(
    airbus_sample, tmp_path
):
    from shipseg.data import airbus

    table = airbus.read_dataset(airbus_sample, log=lambda message: None)
    split = splits.prepare_split(table, tmp_path, (0.15, 0.15), 0, True)
    found = pd.read_csv(tmp_path / "overlaps.csv")
    # Five pairs at shifts of 256 and 512 pixels (a search of the sample by hand found them).
    assert len(found) == 5
    assert set(found.shift_rows.abs()) | set(found.shift_columns.abs()) <= {0, 256, 512}
    side = split.set_index("ImageId").split
    assert (side[found["first"]].to_numpy() == side[found["second"]].to_numpy()).all()
