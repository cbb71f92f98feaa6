"""What a search found: ``report.md``, from the best trials to each hyperparameter's weight.

Its sections: the best trials, how sure the winner is (``evidence``), the front of accuracy
against latency (``front``), and what mattered.

The importance of a hyperparameter is how much worse a random forest fitted to the trials
(hyperparameters and epochs trained -> objective) predicts the objective once that
hyperparameter's column is shuffled: scikit-learn's ``permutation_importance``, as Optuna's
fANOVA answers the same question with forests. Hyperband trains trials for different numbers of
epochs, so ``epochs`` is a column too: the other importances are then at equal training. The
forest is scored on the trials it was fitted to (there are too few to hold some out), so the
figures rank the hyperparameters; they do not say how well the forest predicts new trials.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shipseg.core import atomic
from shipseg.search import evidence, front

# Below this many completed trials the report says the importances are not to be trusted.
FEW_TRIALS = 30


def importances(trials: pd.DataFrame, objective: str, names: list[str], seed: int = 0) -> pd.Series:
    """Permutation importance of each of ``names`` (and ``epochs``) for ``objective``.

    Args:
        trials: One row per completed trial, with the hyperparameters and the objective.
        objective: The column to explain.
        names: The hyperparameters; columns with a single value are left out.
        seed: Fixes the forest and the shuffles.

    Returns:
        Mean drop in the forest's R^2 when the column is shuffled, largest first.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    columns = [name for name in [*names, "epochs"] if name in trials and trials[name].nunique() > 1]
    if not columns or len(trials) < 3:
        return pd.Series(dtype=float)
    features = pd.DataFrame({name: _numeric(trials[name]) for name in columns}, index=trials.index)
    forest = RandomForestRegressor(n_estimators=300, min_samples_leaf=2, random_state=seed)
    forest.fit(features, trials[objective])
    result = permutation_importance(
        forest, features, trials[objective], n_repeats=20, random_state=seed
    )
    return pd.Series(result.importances_mean, index=columns).sort_values(ascending=False)


def _numeric(column: pd.Series) -> pd.Series:
    """Numbers as they are (log-spaced ones need no rescaling for a forest); choices as codes."""
    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        return pd.Series(pd.factorize(column.astype(str), sort=True)[0], index=column.index)
    return column.astype(float)


def write_report(
    trials: pd.DataFrame,
    objective: str,
    names: list[str],
    project_dir: Path,
    verdict: dict,
    budget_ms: float | None = None,
) -> Path:
    """Writes ``report.md`` and ``importance.png`` into ``project_dir``; returns the report.

    Args:
        trials: ``trials.csv``'s table (``trials.trials_table``), best first: the report's
            best trials are its first five completed rows. Needs ``trial_id``, ``status``,
            ``epochs``, ``objective`` and each of ``names`` as columns.
        objective: The column the search maximised (``val_dice``, ``val_f2``, ...); rows
            without a value are left out, as are trials not ``COMPLETED``.
        names: The hyperparameters to show and weigh (``space.DEFAULT_SPACE``'s names).
        project_dir: The search's existing project folder, written into atomically; the
            report links the ``trials.png`` beside it.
        verdict: How sure the winner is (``evidence.judge_winner``), shown in words.
        budget_ms: The search's latency budget (``--max-latency``), or None.

    Returns:
        The path of ``report.md``. ``importance.png`` is written only when an importance
        could be measured (three or more completed trials and a hyperparameter that varied).
    """
    completed = evidence.completed(trials, objective)
    weights = importances(completed, objective, names)
    _draw_front(trials, objective, project_dir, budget_ms)
    if len(weights):
        _plot(weights, objective, project_dir / "importance.png")
    lines = [
        f"# Search report: {project_dir.name}",
        "",
        f"{len(completed)} completed trials of {len(trials)}, ranked by `{objective}`.",
        "",
        "## Best trials",
        "",
        _markdown(completed[["trial_id", objective, *names, "epochs"]].head(5)),
        "",
        "![trials](trials.png)",
        "",
        "## How sure is the winner",
        "",
        *evidence.verdict_lines(verdict),
        "",
        "Margins are paired over the same validation images at each trial's best epoch; the "
        "interval is a 95 % bootstrap over images (`shipseg/search/evidence.py`).",
        "",
        "## Accuracy against latency",
        "",
        *_front_lines(trials, objective, budget_ms),
        "",
        "## What mattered",
        "",
        *_importance_lines(weights, len(completed)),
    ]
    path = project_dir / "report.md"
    atomic.write_text_atomically(path, "\n".join(lines) + "\n")
    return path


def _importance_lines(weights: pd.Series, completed: int) -> list[str]:
    if not len(weights):
        return ["Too few completed trials, or nothing varied: no importance to report."]
    lines = [
        "Permutation importance of each hyperparameter for the objective (a random forest on "
        "the trials; see `shipseg/search/report.py`):",
        "",
        "| hyperparameter | importance |",
        "|---|---|",
        *[f"| {name} | {value:.3f} |" for name, value in weights.items()],
        "",
        "![importance](importance.png)",
    ]
    if completed < FEW_TRIALS:
        lines += [
            "",
            f"Caveat: only {completed} completed trials. A forest on so few points ranks the "
            "hyperparameters that varied the most, not necessarily those that matter: run a "
            f"longer search (at least {FEW_TRIALS} trials) before reading much into it.",
        ]
    return lines


def _draw_front(trials, objective: str, project_dir: Path, budget_ms: float | None) -> None:
    timed = front.front_table(trials, objective)
    if len(timed):
        front.plot_front(timed, objective, project_dir / "front.png", project_dir, budget_ms)


def _front_lines(trials: pd.DataFrame, objective: str, budget_ms: float | None) -> list[str]:
    """The words and table for the front (``front.png``, drawn beside ``report.md``).

    Args:
        trials: ``trials.csv``'s table.
        objective: The score column.
        budget_ms: The search's latency budget, or None.
    """
    table = front.front_table(trials, objective)
    if table.empty:
        return ["No completed trial was timed."]
    over = int((trials.status == front.OVER_LATENCY_BUDGET).sum()) if "status" in trials else 0
    row = table.iloc[0]
    side = int(row.latency_image_size)
    lines = [
        f"Each model timed as deployed ({row.latency_format}): a {side} x {side} image at batch 1 "
        f"after warm-up, the median of the timed calls (`shipseg/predict/latency.py`); "
        f"images/s at batch {int(row.latency_serving_batch)}.",
        "",
        "![front](front.png)",
        "",
        f"The front, {int(table.on_front.sum())} of {len(table)} timed trials (no other trial "
        "is both as fast and as accurate):",
        "",
    ]
    columns = {
        "trial_id": "trial", objective: objective, front.LATENCY_COLUMN: "ms (median)",
        "latency_p95_ms": "ms (p95)", "latency_images_per_s": "images/s",
        "gflops": "GFLOPs", "parameters": "parameters", "file_mib": "MiB",
    }  # fmt: skip
    lines.append(_markdown(table[table.on_front][list(columns)].rename(columns=columns)))
    if budget_ms is not None:
        over_text = "1 trial" if over == 1 else f"{over} trials"
        lines += ["", f"Latency budget {budget_ms:g} ms: {over_text} over it, never trained."]
    return lines


def _markdown(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    rows = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    rows += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(rows)


def _plot(weights: pd.Series, objective: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 0.4 * len(weights) + 1.2))
    axis.barh(list(weights.index)[::-1], np.maximum(weights.to_numpy()[::-1], 0), color="#3b75af")
    axis.set_xlabel(f"drop in the forest's R^2 for {objective} when shuffled")
    axis.set_title("What mattered in the search")
    figure.tight_layout()
    atomic.write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=90, format="png"))
    plt.close(figure)
