"""The train/val/test split and the K folds, stratified by ship count and fixed by a seed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from shipseg import airbus, atomic

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


def make_split(
    table: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> pd.DataFrame:
    """Splits images into train/val/test, stratified by ship count.

    scikit-learn's stratified ``train_test_split`` twice (test first, then val from the rest) on
    the strata of ``ship_count_stratum``, rare ones merged (``merged_strata``), so every part
    keeps the natural share of empty images and of crowded images.

    Args:
        table: The output of ``read_dataset``.
        val_fraction: Share of images for validation.
        test_fraction: Share of images for the final test.
        seed: Fixes the assignment.

    Returns:
        A DataFrame with columns ``ImageId`` and ``split`` (``train``, ``val`` or ``test``),
        sorted by ``ImageId``.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val and test fractions must be in [0, 1) and sum to less than 1")
    ids = np.array(sorted(table.ImageId))
    rest, test = _take(ids, table, test_fraction, seed)
    train, val = _take(rest, table, val_fraction / (1 - test_fraction), seed)
    parts = [
        pd.DataFrame({"ImageId": part, "split": name})
        for name, part in (("train", train), ("val", val), ("test", test))
    ]
    return pd.concat(parts).sort_values("ImageId").reset_index(drop=True)


def make_folds(table: pd.DataFrame, folds: int, seed: int = 0) -> pd.Series:
    """Assigns every image to one of ``folds`` folds, stratified by ship count.

    scikit-learn's ``StratifiedKFold`` on the strata of ``ship_count_stratum``, a stratum with
    fewer images than folds merged into the next more common one (``merged_strata``), so every
    fold keeps the natural share of empty and of crowded images.

    Returns:
        The fold (0 to ``folds - 1``) of each image, indexed by ``ImageId``.

    Raises:
        ValueError: For fewer than 2 folds, or fewer images than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError(f"K-fold needs at least 2 folds, got {folds}")
    if len(table) < folds:
        raise ValueError(f"{len(table)} images cannot make {folds} folds")
    strata = merged_strata(table, minimum=folds)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = np.empty(len(table), dtype=int)
    for fold, (_, test_positions) in enumerate(splitter.split(np.zeros(len(table)), strata)):
        assignment[test_positions] = fold
    return pd.Series(assignment, index=table.ImageId.to_numpy(), name="fold")


def sample_images(table: pd.DataFrame, limit: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``limit`` rows, drawn with the seed, keeping the share of images with ships.

    Used to bound the cost of whole-image validation on large splits without changing what it
    measures (the natural share of empty images).
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


def save_split(split: pd.DataFrame, path: str | os.PathLike) -> None:
    """Saves a split as CSV (``ImageId,split``), atomically."""
    atomic.write_atomically(path, lambda temporary: split.to_csv(temporary, index=False))


def load_split(path: str | os.PathLike, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Loads a split saved by ``save_split``.

    Args:
        path: The split CSV.
        table: When given, images of the split that the dataset no longer has are dropped, with
            an error if that leaves a part empty.

    Raises:
        airbus.DataError: If the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise airbus.DataError(f"{path}: split file is missing")
    try:
        split = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise airbus.DataError(f"{path}: not a readable split file ({error})") from None
    if list(split.columns) != ["ImageId", "split"] or not split.split.isin(SPLIT_NAMES).all():
        raise airbus.DataError(
            f"{path}: not a split file (expected columns ImageId,split with train/val/test)"
        )
    if table is not None:
        split = split[split.ImageId.isin(table.ImageId)]
        for name in ("train", "val"):
            if not (split.split == name).any():
                raise airbus.DataError(f"{path}: no {name} image of this split is in the dataset")
    return split.sort_values("ImageId").reset_index(drop=True)


def select_split(table: pd.DataFrame, split: pd.DataFrame, *names: str) -> pd.DataFrame:
    """Returns the rows of ``table`` whose image is in one of the named parts of ``split``."""
    ids = set(split.ImageId[split.split.isin(names)])
    return table[table.ImageId.isin(ids)].reset_index(drop=True)
