"""Accuracy against latency: the trials no other trial beats on both, drawn for ``report.md``.

A deployment has a latency budget, and the most accurate model may not fit it. Adding
milliseconds to a score (Keras Tuner's multi-objective mode sums its objectives) lets one
dominate the other; the honest answer is the Pareto front: every trial whose score no faster
trial reaches. ``train.py --best --max-latency`` then picks the best trial under a budget.

Every trial is timed as it would be deployed (``shipseg.predict.latency``, ``latency_*``
columns of ``trials.csv``); the score is the search's objective, and its bar the 95 % bootstrap
spread of the trial's per-image scores (``val_images.csv``), drawn around it for the F2
objectives (their score is the per-image mean; the pixel Dice is not, and goes without bars).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shipseg.core import atomic
from shipseg.scoring import metrics
from shipseg.search import evidence

LATENCY_COLUMN = "latency_median_ms"
# The status ``trials.csv`` gives a trial over the latency budget (it was never trained).
OVER_LATENCY_BUDGET = "OVER_LATENCY_BUDGET"


def non_dominated(scores: np.ndarray, latencies: np.ndarray) -> np.ndarray:
    """Which points no other point beats (as high a score, as low a latency, one strictly).

    Args:
        scores: Each trial's score (higher is better).
        latencies: Each trial's milliseconds an image (lower is better), aligned with ``scores``.

    Returns:
        A boolean array, True for the points on the front. Ties on both count as one point
        each, both on the front.
    """
    scores, latencies = np.asarray(scores, float), np.asarray(latencies, float)
    as_good = (scores[None, :] >= scores[:, None]) & (latencies[None, :] <= latencies[:, None])
    better = (scores[None, :] > scores[:, None]) | (latencies[None, :] < latencies[:, None])
    return ~np.any(as_good & better, axis=1)


def front_table(trials: pd.DataFrame, objective: str) -> pd.DataFrame:
    """The completed, timed trials, fastest first, with an ``on_front`` column.

    Args:
        trials: ``trials.csv``'s table (``trials.trials_table``).
        objective: The score column.

    Returns:
        The rows with both a score and a latency; empty when none has both.
    """
    if trials.empty or LATENCY_COLUMN not in trials:
        return pd.DataFrame(columns=["trial_id", objective, LATENCY_COLUMN, "on_front"])
    timed = evidence.completed(trials, objective)
    timed = timed[timed[LATENCY_COLUMN].notna()].sort_values(
        [LATENCY_COLUMN, objective], ascending=[True, False]
    )
    return timed.assign(
        on_front=non_dominated(timed[objective].to_numpy(), timed[LATENCY_COLUMN].to_numpy())
    ).reset_index(drop=True)


def score_spreads(table: pd.DataFrame, objective: str, project_dir: Path) -> np.ndarray:
    """Each row's 95 % bootstrap bar (below, above) from its per-image scores; 0 without them.

    Args:
        table: ``front_table``'s rows.
        objective: The search's objective (its per-image column: ``evidence.IMAGE_COLUMNS``).
        project_dir: The search's folder (each trial's ``val_images.csv``).

    Returns:
        A ``(2, len(table))`` array, as ``matplotlib``'s ``yerr`` takes it.
    """
    column = evidence.IMAGE_COLUMNS[objective]
    spreads = np.zeros((2, len(table)))
    for index, trial_id in enumerate(table.trial_id.astype(str)):
        images = evidence.image_scores(project_dir, trial_id)
        if images is None or column not in images or images.empty:
            continue
        values = images[column].to_numpy(float)
        low, high = metrics.bootstrap_intervals(values, np.zeros_like(values))["f2"]
        spreads[:, index] = [values.mean() - low, high - values.mean()]
    return spreads


def plot_front(
    table: pd.DataFrame, objective: str, path: Path, project_dir: Path, budget_ms: float | None
) -> None:
    """Draws every timed trial (score against milliseconds an image), the front joined.

    Args:
        table: ``front_table``'s rows.
        objective: The score column, the vertical axis.
        path: The PNG to write (atomically).
        project_dir: The search's folder, for each trial's per-image scores.
        budget_ms: The latency budget, drawn as a vertical line, or None.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    # The pixel Dice is not a mean over images, so its per-image spread would be drawn around
    # the wrong centre: bars only for the F2 objectives, which are.
    barred = objective != "val_dice"
    spreads = score_spreads(table, objective, project_dir) if barred else None
    label = "trial (bar: 95 % bootstrap over validation images)" if barred else "trial"
    axes.errorbar(
        table[LATENCY_COLUMN], table[objective], yerr=spreads, fmt="o", color="0.6",
        ecolor="0.8", label=label,
    )  # fmt: skip
    front = table[table.on_front]
    axes.plot(
        front[LATENCY_COLUMN], front[objective], "-o", color="tab:blue", label="front", zorder=3
    )
    for _, row in front.iterrows():
        axes.annotate(
            str(row.trial_id), (row[LATENCY_COLUMN], row[objective]), textcoords="offset points",
            xytext=(5, 5), fontsize=8, color="tab:blue",
        )  # fmt: skip
    if budget_ms is not None:
        axes.axvline(budget_ms, color="tab:red", linestyle="--", label=f"budget {budget_ms:g} ms")
    if len(table) and table[LATENCY_COLUMN].max() > 10 * table[LATENCY_COLUMN].min():
        axes.set_xscale("log")
    row = table.iloc[0]
    side = int(row.latency_image_size)
    axes.set_xlabel(f"ms an image ({side} x {side}, batch 1, {row.latency_format}, median)")
    axes.set_ylabel(objective)
    axes.set_title("Accuracy against latency: every trial, the front joined")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    atomic.write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=110))
    plt.close(figure)
