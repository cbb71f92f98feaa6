"""Overlapping tiles: which images of a dataset show the same place, and their groups.

The Airbus images are 768 x 768 tiles cut from larger satellite scenes on a 256-pixel grid, and
neighbouring tiles overlap by 256 or 512 pixels: the same ship, quay or cloud is in several
images. A split that puts two such tiles on different sides validates a model on pixels it
trained on. ``find_overlaps`` finds them; ``overlap_groups`` turns them into groups (connected
components) that the split and the K folds keep whole (``splits``).

How, at the full data's scale (192,556 images) on a CPU:
    1. Each image is described once by the grey means of its 16 x 16-pixel cells, decoded at
       1/8 scale by the JPEG decoder itself (``describe_image``: 48 x 48 bytes an image, cached
       on disk with each file's size and time, so a rerun decodes nothing).
    2. Each 256-pixel block that is not uniform gets an exact key (its cells), and a block with
       clear structure also two coarse keys (its 4 x 4 means, quantised on two grids offset
       by half a step, so that a mean that JPEG noise pushes across a step on one grid stays
       put on the other). Uniform blocks (calm
       water, plain cloud) get none: they match everything. Blocks sharing a key propose the
       shift that would align them; keys shared by very many blocks are skipped.
    3. A proposed shift is confirmed on all the cells the two images would share: they must
       vary, and differ by a small share of how much they vary (``OverlapSettings``).

Only shifts on the 256-pixel grid are looked for: every overlap found in the sample lies on it
(shifts of 256 and 512 pixels), as the competition's teams found on the full data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from shipseg.core import atomic

TILE = 768  # the Airbus tiles' size; images of other sizes are not compared
BLOCK = 256  # the grid the scenes were cut on
CELL = 16  # pixels per side of a descriptor cell
CELLS = TILE // CELL  # 48 cells a side
BLOCK_CELLS = BLOCK // CELL  # 16 cells a block side
KEY_CELLS = 4  # a block's key: its means over 4 x 4 squares of 64 pixels


@dataclasses.dataclass(frozen=True)
class OverlapSettings:
    """How sure an overlap must be.

    Measured on the 721-image sample: the shared cells of true overlaps are equal to the last
    grey level (their pixels are mostly bit-identical), while the closest unrelated pairs,
    open water, differ by about as much as their cells vary (ratio 0.6 or more).

    Attributes:
        min_structure: Standard deviation (grey levels) of a region's cell means below which
            it is uniform (calm water, plain cloud, a blank image): it confirms nothing.
        max_difference: Mean absolute difference of two images' shared cells, as a share of
            those cells' standard deviation, above which they are not the same place.
        key_structure: Standard deviation above which a block also gets coarse keys, which
            find overlaps whose pixels differ a little (JPEG noise); below it only the exact
            key (its cells to the grey level) proposes.
        key_step: Quantisation step (grey levels) of the coarse keys.
        max_bucket: Keys shared by more blocks than this propose nothing (repeated texture).
    """

    min_structure: float = 0.5
    max_difference: float = 0.2
    key_structure: float = 3.0
    key_step: float = 16.0
    max_bucket: int = 50


def cache_path(results_dir: str | os.PathLike, data_dir: str | os.PathLike) -> Path:
    """Where the descriptions of a data folder's images are cached (``<results>/.cache/``).

    One file per data folder, shared by every project on it.
    """
    digest = hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return Path(results_dir) / ".cache" / f"overlaps-{Path(data_dir).name}-{digest}.npz"


def describe_image(path: str | os.PathLike) -> np.ndarray | None:
    """The grey means of an image's 16 x 16 cells, ``(48, 48)`` uint8; None if not 768 x 768.

    A JPEG is decoded at 1/8 scale (``Image.draft``: the decoder keeps only each 8 x 8 block's
    mean), about 30 times faster than a full decode; other formats are decoded and reduced.

    Raises:
        OSError: For a file that cannot be read or decoded (PIL's error).
    """
    with Image.open(path) as image:
        if image.size != (TILE, TILE):
            return None
        image.draft("L", (TILE // 8, TILE // 8))
        grey = np.asarray(image.convert("L"), dtype=np.float32)
    factor = grey.shape[0] // CELLS
    cells = grey.reshape(CELLS, factor, CELLS, factor).mean(axis=(1, 3))
    return np.round(cells).astype(np.uint8)


def describe_images(
    paths: Sequence[str | os.PathLike],
    cache: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> np.ndarray:
    """``describe_image`` of every path, ``(n, 48, 48)``; all-zero rows for images not compared.

    With ``cache``, descriptions of files whose size and modification time are unchanged are
    read from it; new ones are added to it (atomically), and entries of other files are kept,
    so projects on different parts of one folder share it. An unreadable image is reported
    through ``log``, left out of the comparison and not cached (it is tried again next time).

    Args:
        paths: The image files, in the order of the rows returned.
        cache: The ``.npz`` file of earlier descriptions (``cache_path``); None: decode all.
        log: Receives one line per unreadable image (the commands pass ``print``).
    """
    known = _read_cache(cache)
    cells = np.zeros((len(paths), CELLS, CELLS), np.uint8)
    new = {}
    for index, path in enumerate(paths):
        try:
            key = _file_key(path)
            if key in known:
                cells[index] = known[key]
                continue
            described = describe_image(path)
        except OSError as error:
            log(f"{path}: skipped for overlap search ({error})")
            continue
        if described is not None:
            cells[index] = described
        new[key] = cells[index]
        if len(new) % 5000 == 0:
            log(f"overlaps: described {index + 1} of {len(paths)} images")
    if cache is not None and new:
        _write_cache(cache, {**known, **new})
    return cells


def _file_key(path: str | os.PathLike) -> str:
    """A cache key that changes when the file does: absolute path, size, modification time."""
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_cache(cache: str | os.PathLike | None) -> dict[str, np.ndarray]:
    """The cached descriptions by file key.

    Empty for no cache, or for one that is damaged or was made with other cells: it is
    rebuilt, never trusted.
    """
    if cache is None or not Path(cache).is_file():
        return {}
    try:
        with np.load(cache, allow_pickle=False) as data:
            keys, cells = data["keys"].tolist(), data["cells"]
    except (OSError, ValueError, KeyError):
        return {}
    if cells.shape[1:] != (CELLS, CELLS) or len(keys) != len(cells):
        return {}
    return dict(zip(keys, cells, strict=True))


def _write_cache(cache: str | os.PathLike, entries: dict[str, np.ndarray]) -> None:
    Path(cache).parent.mkdir(parents=True, exist_ok=True)
    keys = np.array(list(entries), dtype=str)
    cells = np.stack(list(entries.values())) if entries else np.zeros((0, CELLS, CELLS), np.uint8)
    atomic.write_atomically(
        cache, lambda temporary: np.savez(temporary, keys=keys, cells=cells), suffix=".npz"
    )


def block_keys(cells: np.ndarray, settings: OverlapSettings) -> list[tuple]:
    """The keys of the blocks with structure of images ``(n, 48, 48)``.

    Every block above ``min_structure`` gets its exact key (its cells' bytes); a block above
    ``key_structure`` also gets two coarse keys (its 4 x 4 means on two staggered grids).
    Computed for all images at once: a loop over blocks in Python was the slowest step.

    Returns:
        ``[(key, image, row, column), ...]`` (row and column of the block, 0 to 2).
    """
    grid, side = TILE // BLOCK, BLOCK_CELLS // KEY_CELLS
    blocks = cells.reshape(len(cells), grid, BLOCK_CELLS, grid, BLOCK_CELLS).transpose(
        0, 1, 3, 2, 4
    )
    spread = blocks.std(axis=(3, 4), dtype=np.float32)
    coarse = blocks.reshape(*blocks.shape[:3], KEY_CELLS, side, KEY_CELLS, side).mean(
        axis=(4, 6), dtype=np.float32
    )
    keys = []
    for image, row, column in zip(*np.nonzero(spread >= settings.min_structure), strict=True):
        place = (int(image), int(row), int(column))
        keys.append((("exact", blocks[image, row, column].tobytes()), *place))
        if spread[image, row, column] >= settings.key_structure:
            for stagger in (0, 1):
                quantised = np.floor(coarse[image, row, column] / settings.key_step + stagger / 2)
                keys.append(((stagger, quantised.astype(np.int8).tobytes()), *place))
    return keys


def candidate_shifts(
    cells: np.ndarray, settings: OverlapSettings
) -> set[tuple[int, int, int, int]]:
    """Pairs of images whose blocks share a key, with the shift that aligns them.

    Returns:
        ``{(a, b, rows, columns)}`` with ``a < b``: image ``b``'s block ``(r, c)`` would be
        image ``a``'s block ``(r + rows, c + columns)`` (shifts in blocks, -2 to 2).
    """
    buckets = defaultdict(list)
    for key, *place in block_keys(cells, settings):
        buckets[key].append(place)
    candidates = set()
    for members in buckets.values():
        if len(members) < 2 or len(members) > settings.max_bucket:
            continue
        for (a, row_a, col_a), (b, row_b, col_b) in itertools.combinations(sorted(members), 2):
            if a != b:
                candidates.add((a, b, row_a - row_b, col_a - col_b))
    return candidates


def shared_cells(first: np.ndarray, second: np.ndarray, rows: int, columns: int):
    """The cells two descriptions share at a shift: ``(first's, second's)``, equal shapes.

    ``second`` sits ``(rows, columns)`` blocks into ``first`` (see ``candidate_shifts``).

    Args:
        first: One image's ``(48, 48)`` description (``describe_image``).
        second: The other image's description.
        rows: Shift down, in 256-pixel blocks (-2 to 2): where ``second``'s top edge lies in
            ``first``; negative when it starts above.
        columns: Shift right, in 256-pixel blocks (-2 to 2), as ``rows``.
    """
    dy, dx = rows * BLOCK_CELLS, columns * BLOCK_CELLS
    a = first[max(dy, 0) : CELLS + min(dy, 0), max(dx, 0) : CELLS + min(dx, 0)]
    b = second[max(-dy, 0) : CELLS + min(-dy, 0), max(-dx, 0) : CELLS + min(-dx, 0)]
    return a, b


def confirm(
    first: np.ndarray, second: np.ndarray, rows: int, columns: int, settings: OverlapSettings
) -> bool:
    """Whether two descriptions agree on the cells they would share at this shift.

    Their mean absolute difference must be small against how much those cells vary
    (``settings.max_difference``), and they must vary at all (``settings.min_structure``).

    Args:
        first: One image's ``(48, 48)`` description (``describe_image``).
        second: The other image's description.
        rows: Proposed shift down of ``second`` in ``first``, in 256-pixel blocks (-2 to 2).
        columns: Proposed shift right, in 256-pixel blocks (-2 to 2).
        settings: The thresholds that make the agreement sure enough.
    """
    a, b = shared_cells(first, second, rows, columns)
    a, b = a.astype(np.float32), b.astype(np.float32)
    structure = min(float(a.std()), float(b.std())) if a.size else 0.0
    if structure < settings.min_structure:
        return False
    return float(np.abs(a - b).mean()) <= settings.max_difference * structure


def find_overlaps(
    image_ids: Sequence[str],
    paths: Sequence[str | os.PathLike],
    cache: str | os.PathLike | None = None,
    settings: OverlapSettings = OverlapSettings(),
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Every pair of images that overlap, with the shift between them.

    Args:
        image_ids: The images' ids (file names), aligned with ``paths``: the rows name them.
        paths: The image files; only 768 x 768 tiles are compared.
        cache: The ``.npz`` file of descriptions kept between runs (``cache_path``); None
            decodes every image anew.
        settings: How sure an overlap must be (the defaults were measured on the sample).
        log: Receives one line per unreadable image, which is left out.

    Returns:
        A DataFrame with one row per overlapping pair: ``first`` and ``second`` (image ids,
        ``first`` < ``second`` in the order given), ``shift_rows`` and ``shift_columns``
        (pixels: ``second``'s top-left corner lies there in ``first``'s coordinates) and
        ``shared`` (the share of a tile's area they have in common).
    """
    cells = describe_images(paths, cache, log)
    rows = []
    for a, b, dy, dx in sorted(candidate_shifts(cells, settings)):
        if confirm(cells[a], cells[b], dy, dx, settings):
            shared = (TILE // BLOCK - abs(dy)) * (TILE // BLOCK - abs(dx)) / (TILE // BLOCK) ** 2
            rows.append((image_ids[a], image_ids[b], dy * BLOCK, dx * BLOCK, shared))
    columns = ["first", "second", "shift_rows", "shift_columns", "shared"]
    return pd.DataFrame(rows, columns=columns)


def overlap_groups(image_ids: Sequence[str], overlaps: pd.DataFrame) -> np.ndarray:
    """The group of every image: connected components of the overlap graph, numbered 0.. .

    Images that overlap nothing are groups of their own. Groups are numbered in the order of
    their first image, so the numbering depends only on the ids and the overlaps.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    position = {image_id: index for index, image_id in enumerate(image_ids)}
    a = overlaps["first"].map(position).to_numpy(dtype=np.int64)
    b = overlaps["second"].map(position).to_numpy(dtype=np.int64)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(image_ids),) * 2)
    _, labels = connected_components(graph, directed=False)
    _, first_seen = np.unique(labels, return_index=True)
    renumber = np.empty(len(first_seen), dtype=np.int64)
    renumber[np.argsort(first_seen)] = np.arange(len(first_seen))
    return renumber[labels]


def describe_groups(groups: Sequence[int]) -> dict:
    """How many groups there are and how large: what the commands and the notebook report."""
    sizes = np.bincount(np.asarray(groups, dtype=np.int64)) if len(groups) else np.array([0])
    shared = sizes[sizes > 1]
    return {
        "images": int(sizes.sum()),
        "groups": int((sizes > 0).sum()),
        "groups_of_several": int(len(shared)),
        "images_in_groups_of_several": int(shared.sum()),
        "largest_group": int(sizes.max(initial=0)),
    }


def group_summary(description: dict) -> str:
    """One line for the console: ``describe_groups`` in words."""
    return (
        f"{description['images']} images in {description['groups']} overlap groups: "
        f"{description['images_in_groups_of_several']} images share "
        f"{description['groups_of_several']} groups of 2 or more (largest "
        f"{description['largest_group']}); a group never straddles the split or the folds"
    )
