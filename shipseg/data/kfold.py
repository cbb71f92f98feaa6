"""K-fold cross-validation's bookkeeping: which images each fold uses, and the summary.

``train.py --folds K`` trains one model per fold (``shipseg.train.run.run_folds``); this
module says which images it trains, validates and tests on, and sums up the F2 and its gain
over the no-ship baseline across folds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

# What makes two trainings of a fold the same: its images, the model and how it is trained.
# The command line, the library versions and the time budget (shared out anew on each run)
# may differ.
SAME_FOLD = (
    "hyperparameters",
    "input",
    "data_dir",
    "split_file",
    "monitor",
    "epochs",
    "images_per_epoch",
    "patience",
    "encoder_weights",
    "flip_tta",
    "seed",
    "trained_on",
    "folds",
    "fold",
    "fold_images",
)


def fold_tables(pool: pd.DataFrame, folds: pd.Series, fold: int) -> dict[str, pd.DataFrame]:
    """Fold ``fold`` tests, the next fold validates, the others train (no image in two).

    Args:
        pool: The images the folds were made from (train + val; never the test split).
        folds: ``splits.make_folds`` of ``pool``.
        fold: The fold to test on.
    """
    count = int(folds.max()) + 1
    fold_of = pool.ImageId.map(folds)
    return {
        "test": pool[fold_of == fold].reset_index(drop=True),
        "val": pool[fold_of == (fold + 1) % count].reset_index(drop=True),
        "train": pool[~fold_of.isin([fold, (fold + 1) % count])].reset_index(drop=True),
    }


def fold_images(tables: dict[str, pd.DataFrame]) -> str:
    """A digest of which images a fold trains, validates and tests on.

    Part of the fold's configuration: the split file's path stays the same when a search is
    run again with other data or a library draws the folds otherwise, its images do not.
    """
    names = "|".join(",".join(sorted(tables[role].ImageId)) for role in ("train", "val", "test"))
    return hashlib.sha256(names.encode()).hexdigest()


def finished_fold(fold_dir: Path, config: dict) -> dict | None:
    """The metrics of an earlier training of this same fold, or None when it must train.

    A fold counts as finished when its folder holds a complete training (``train.py`` swaps
    the folder in whole, ``config.json`` saying ``complete``) whose configuration agrees with
    ``config`` on every key of ``SAME_FOLD``.
    """
    try:
        earlier = json.loads((fold_dir / "config.json").read_text())
        metrics = json.loads((fold_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    same = all(earlier.get(key) == config.get(key) for key in SAME_FOLD)
    return metrics if same and earlier.get("status") == "complete" else None


def fold_row(fold: int, tables: dict[str, pd.DataFrame], metrics: dict) -> dict:
    """One fold's line of the summary.

    Args:
        fold: The fold's number (0 to K - 1), the one it tested on.
        tables: The fold's ``train``, ``val`` and ``test`` images (``fold_tables``), counted.
        metrics: The fold's ``metrics.json``: its ``test`` scores and ``train_seconds``.
    """
    test = metrics["test"]
    return {
        "fold": fold,
        "train_images": len(tables["train"]),
        "val_images": len(tables["val"]),
        "test_images": test["images"],
        "f2": test["f2"],
        "baseline": test["f2_no_ship_baseline"],
        "gain": test["f2"] - test["f2_no_ship_baseline"],
        "gain_interval": test["intervals"]["gain"],
        "dice_ship_images": test["dice_ship_images"],
        "ship_images_found": test["ship_images_found"],
        "empty_images_with_ships": test["empty_images_with_ships"],
        "train_seconds": metrics["train_seconds"],
    }


def summarise_folds(folds: pd.DataFrame, count: int) -> dict:
    """Mean and standard deviation across folds of the F2, the baseline and the gain.

    Args:
        folds: One ``fold_row`` per finished fold.
        count: How many folds there are (K), finished or not.
    """
    summary = {
        "folds": folds.to_dict(orient="records"),
        "folds_finished": len(folds),
        "folds_total": count,
        "complete": len(folds) == count,
    }
    for name in ("f2", "baseline", "gain", "dice_ship_images"):
        summary[name] = {
            "mean": float(folds[name].mean()),
            "std": float(folds[name].std(ddof=1)) if len(folds) > 1 else 0.0,
        }
    summary["folds_above_baseline"] = int((folds.gain > 0).sum())
    return summary


def print_folds(summary: dict) -> None:
    """Fold by fold, then the mean and spread."""
    print("\nfold  test images  F2      baseline  gain     95 % interval of the gain")
    for row in summary["folds"]:
        low, high = row["gain_interval"]
        print(
            f"{row['fold']:>4}  {row['test_images']:>11}  {row['f2']:.4f}  {row['baseline']:.4f}"
            f"    {row['gain']:+.4f}  [{low:+.3f}, {high:+.3f}]"
        )
    for name in ("f2", "baseline", "gain"):
        print(f"{name:>8}: mean {summary[name]['mean']:+.4f}, std {summary[name]['std']:.4f}")
    print(f"folds above the baseline: {summary['folds_above_baseline']} of {len(summary['folds'])}")
    if not summary["complete"]:
        finished = {row["fold"] for row in summary["folds"]}
        missing = " ".join(str(k) for k in range(summary["folds_total"]) if k not in finished)
        print(
            f"{len(finished)} of {summary['folds_total']} folds finished: the figures above "
            f"cover those; --only-folds {missing} (or --folds alone) trains the rest"
        )
