"""The train/val/test split and the K folds, stratified by ship count and fixed by a seed.

Overlapping tiles (``overlaps``) come as groups, and a group is never divided: the splitters
below split groups, not images. Each group is one unit for scikit-learn's stratified
splitters, stratified by its most crowded image's ship count, and then stands for all its
images. Where nothing overlaps every unit is one image and the split is the one an image-wise
split gives (scikit-learn's ``StratifiedGroupKFold`` would reshuffle even then); on the full
data, fractions are fractions of groups.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from shipseg.core import atomic, errors
from shipseg.data import overlaps

SPLIT_NAMES = ("train", "val", "test")


def ship_count_stratum(ship_count: int) -> str:
    """Groups images by ship count for stratification: 0, 1, 2, 3-4 and 5+ ships."""
    if ship_count >= 5:
        return "5+"
    if ship_count >= 3:
        return "3-4"
    return str(ship_count)


# Ship-count strata from the most to the least common: a rare stratum merges into the one before.
STRATA = ("0", "1", "2", "3-4", "5+")


def merged_strata(table: pd.DataFrame, minimum: int, most: int | None = None) -> np.ndarray:
    """Each image's ship-count stratum, with rare strata merged so that a splitter can use them.

    A stratum with fewer than ``minimum`` images is merged into the next more common one (5+
    ships into 3-4, and so on); with ``most``, the rarest are merged until at most that many are
    left. A stratum "0" (no ship) that is itself too small joins the largest other one. Only
    when no stratum reaches ``minimum`` is the table left unstratified (one stratum).

    Args:
        table: Images with a ``ship_count`` column (one row per image or per overlap group).
        minimum: Fewest images a stratum may keep: the splitter needs that many in each
            (the number of folds, or 2 for a split into two parts).
        most: Most strata to keep (the smaller side of a split cannot hold more); None: any.
    """
    strata = table.ship_count.map(ship_count_stratum).to_numpy()
    for position in range(len(STRATA) - 1, 0, -1):
        count = (strata == STRATA[position]).sum()
        if 0 < count < minimum or (most is not None and len(set(strata)) > most and count):
            strata[strata == STRATA[position]] = STRATA[position - 1]
    names, counts = np.unique(strata, return_counts=True)
    if len(names) > 1 and counts[names == STRATA[0]].sum() < minimum:
        largest = names[names != STRATA[0]][np.argmax(counts[names != STRATA[0]])]
        strata[strata == STRATA[0]] = largest
    if (np.unique(strata, return_counts=True)[1] < minimum).any():
        strata[:] = STRATA[0]
    return strata


def _take(ids: np.ndarray, table: pd.DataFrame, fraction: float, seed: int):
    """scikit-learn's stratified ``train_test_split``: (kept ids, taken ids) by ship count."""
    from sklearn.model_selection import train_test_split

    taken = round(fraction * len(ids))
    if taken in (0, len(ids)):
        return (ids, ids[:0]) if taken == 0 else (ids[:0], ids)
    rows = table.set_index("ImageId").loc[ids].reset_index()
    # Each stratum needs an image on both sides: at most as many strata as the smaller side.
    strata = merged_strata(rows, minimum=2, most=max(min(taken, len(ids) - taken), 1))
    stratify = strata if len(set(strata)) > 1 else None
    return train_test_split(ids, test_size=taken, stratify=stratify, random_state=seed)


def group_units(table: pd.DataFrame, groups=None) -> tuple[pd.DataFrame, pd.Series]:
    """The units the splitters divide: one per overlap group.

    Returns:
        One row per group (its first ``ImageId`` and its largest ``ship_count``), and each
        image's unit: the ``ImageId`` that stands for its group (indexed by ``ImageId``).
    """
    groups = np.arange(len(table)) if groups is None else np.asarray(groups)
    frame = pd.DataFrame(
        {"ImageId": table.ImageId.to_numpy(), "ship_count": table.ship_count.to_numpy()}
    )
    frame["group"] = groups
    units = frame.groupby("group").agg(ImageId=("ImageId", "min"), ship_count=("ship_count", "max"))
    unit_of = frame.group.map(units.ImageId)
    unit_of.index = frame.ImageId
    return units.reset_index(drop=True), unit_of


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raises ValueError unless both fractions are in [0, 1) and sum to less than 1."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val and test fractions must be in [0, 1) and sum to less than 1")


def make_split(
    table: pd.DataFrame,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    groups=None,
) -> pd.DataFrame:
    """Splits images into train/val/test, stratified by ship count, overlap groups whole.

    scikit-learn's stratified ``train_test_split`` twice (test first, then val from the rest) on
    the strata of ``ship_count_stratum``, rare ones merged (``merged_strata``), so every part
    keeps the natural share of empty images and of crowded images. It splits groups (see the
    module): every image of a group lands in the same part.

    Args:
        table: The output of ``read_dataset``.
        val_fraction: Share of images (of groups) for validation.
        test_fraction: Share of images (of groups) for the final test.
        seed: Fixes the assignment.
        groups: Each image's overlap group (``overlaps.overlap_groups``), in the table's order;
            None: every image is its own group.

    Returns:
        A DataFrame with columns ``ImageId``, ``split`` (``train``, ``val`` or ``test``) and
        ``group``, sorted by ``ImageId``.
    """
    check_fractions(val_fraction, test_fraction)
    units, unit_of = group_units(table, groups)
    ids = np.array(sorted(units.ImageId))
    rest, test = _take(ids, units, test_fraction, seed)
    train, val = _take(rest, units, val_fraction / (1 - test_fraction), seed)
    part_of = {
        unit: name
        for name, part in (("train", train), ("val", val), ("test", test))
        for unit in part
    }
    split = pd.DataFrame({"ImageId": unit_of.index, "split": unit_of.map(part_of).to_numpy()})
    split["group"] = np.arange(len(table)) if groups is None else np.asarray(groups)
    return split.sort_values("ImageId").reset_index(drop=True)


def make_folds(table: pd.DataFrame, folds: int, seed: int = 0, groups=None) -> pd.Series:
    """Assigns every image to one of ``folds`` folds, stratified by ship count, groups whole.

    scikit-learn's ``StratifiedKFold`` on the strata of ``ship_count_stratum``, a stratum with
    fewer groups than folds merged into the next more common one (``merged_strata``), so every
    fold keeps the natural share of empty and of crowded images. It assigns groups (see the
    module; ``groups`` as in ``make_split``): overlapping images share a fold.

    Args:
        table: The output of ``read_dataset`` (``ImageId`` and ``ship_count`` columns).
        folds: K, the number of folds (at least 2, at most the number of groups).
        seed: Fixes the assignment: the same table and seed give the same folds.
        groups: Each image's overlap group, in the table's order; None: every image is its
            own group.

    Returns:
        The fold (0 to ``folds - 1``) of each image, indexed by ``ImageId``.

    Raises:
        ValueError: For fewer than 2 folds, or fewer images than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError(f"K-fold needs at least 2 folds, got {folds}")
    units, unit_of = group_units(table, groups)
    if len(units) < folds:
        raise ValueError(f"{len(units)} images (overlap groups) cannot make {folds} folds")
    strata = merged_strata(units, minimum=folds)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = np.empty(len(units), dtype=int)
    for fold, (_, test_positions) in enumerate(splitter.split(np.zeros(len(units)), strata)):
        assignment[test_positions] = fold
    fold_of = dict(zip(units.ImageId, assignment, strict=True))
    return pd.Series(unit_of.map(fold_of).to_numpy(), index=unit_of.index, name="fold")


def sample_images(table: pd.DataFrame, limit: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``limit`` rows, drawn with the seed, keeping the share of images with ships.

    Used to bound the cost of whole-image validation on large splits without changing what it
    measures (the natural share of empty images).

    Args:
        table: Images with ``ImageId`` and ``ship_count`` columns.
        limit: Most rows to keep (at least 1); None keeps the whole table.
        seed: Fixes which rows are drawn, so repeated validations score the same images.

    Returns:
        The kept rows, sorted by ``ImageId``.

    Raises:
        ValueError: For a ``limit`` under 1.
    """
    if limit is None or limit >= len(table):
        return table.reset_index(drop=True)
    if limit < 1:
        raise ValueError(f"cannot keep {limit} images: at least 1 is needed")
    has_ship = table.ship_count > 0
    with_ships = min(
        int(has_ship.sum()), max(int(round(limit * has_ship.mean())), 1 if has_ship.any() else 0)
    )
    parts = [
        table[has_ship].sample(n=with_ships, random_state=seed),
        table[~has_ship].sample(n=limit - with_ships, random_state=seed),
    ]
    return pd.concat(parts).sort_values("ImageId").reset_index(drop=True)


def prepare_split(
    table: pd.DataFrame,
    project_dir: Path,
    fractions: tuple[float, float],
    seed: int,
    fresh: bool,
    cache: Path | None = None,
) -> pd.DataFrame:
    """A project's split: loaded from ``split.csv``, or made on a fresh start and saved.

    A fresh split first finds the dataset's overlapping tiles (``overlaps.find_overlaps``,
    its descriptions cached in ``cache``), writes them to ``overlaps.csv`` beside the split,
    and keeps each overlap group on one side (``make_split``).

    Args:
        table: The output of ``read_dataset``.
        project_dir: The project's folder (``split.csv``, ``overlaps.csv``).
        fractions: ``(val_fraction, test_fraction)``.
        seed: Fixes the assignment.
        fresh: Make a new split even where one is saved.
        cache: Where the image descriptions are cached (None: not cached).

    Raises:
        ValueError: For fractions that cannot make a split.
    """
    split_path = Path(project_dir) / "split.csv"
    if split_path.is_file() and not fresh:
        return load_split(split_path, table)
    check_fractions(*fractions)  # before minutes of looking for overlaps on the full data
    found = overlaps.find_overlaps(table.ImageId.tolist(), table.path.tolist(), cache)
    atomic.write_atomically(
        Path(project_dir) / "overlaps.csv", lambda temporary: found.to_csv(temporary, index=False)
    )
    groups = overlaps.overlap_groups(table.ImageId.tolist(), found)
    split = make_split(table, *fractions, seed=seed, groups=groups)
    save_split(split, split_path)
    return split


def save_split(split: pd.DataFrame, path: str | os.PathLike) -> None:
    """Saves a split as CSV (``ImageId,split,group``), atomically."""
    atomic.write_atomically(path, lambda temporary: split.to_csv(temporary, index=False))


def load_split(path: str | os.PathLike, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Loads a split saved by ``save_split``.

    Args:
        path: The split CSV.
        table: When given, images of the split that the dataset no longer has are dropped, with
            an error if that leaves a part empty.

    Returns:
        Columns ``ImageId``, ``split`` and ``group`` (a split saved before overlap groups: each
        image its own group), sorted by ``ImageId``.

    Raises:
        errors.DataError: If the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise errors.DataError(f"{path}: split file is missing")
    try:
        split = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise errors.DataError(f"{path}: not a readable split file ({error})") from None
    if list(split.columns)[:2] != ["ImageId", "split"] or not split.split.isin(SPLIT_NAMES).all():
        raise errors.DataError(
            f"{path}: not a split file (expected columns ImageId,split with train/val/test)"
        )
    if "group" not in split:
        print(
            f"warning: {path} was saved before overlap groups: overlapping tiles were not "
            "looked for (a fresh search, --overwrite, makes a split that keeps them together)",
            file=sys.stderr,
        )
        split["group"] = np.arange(len(split))
    groups = pd.to_numeric(split.group, errors="coerce")
    if groups.isna().any() or (groups % 1 != 0).any():
        raise errors.DataError(f"{path}: the group column must hold whole numbers")
    split["group"] = groups.astype(np.int64)
    if table is not None:
        split = split[split.ImageId.isin(table.ImageId)]
        for name in ("train", "val"):
            if not (split.split == name).any():
                raise errors.DataError(f"{path}: no {name} image of this split is in the dataset")
    return split.sort_values("ImageId").reset_index(drop=True)


def select_split(table: pd.DataFrame, split: pd.DataFrame, *names: str) -> pd.DataFrame:
    """Returns the rows of ``table`` whose image is in one of the named parts of ``split``."""
    ids = set(split.ImageId[split.split.isin(names)])
    return table[table.ImageId.isin(ids)].reset_index(drop=True)
