"""What a search leaves behind: ``trials.csv``, ``best_hparams.json``, ``trials.png``, a summary.

Read from the tuner's state after (or during) a search, never from the search's own memory, so
that a resumed or distributed search exports exactly what Keras Tuner recorded.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import keras_tuner
import numpy as np
import pandas as pd

from shipseg.core import atomic, errors
from shipseg.model import space
from shipseg.predict import latency
from shipseg.search import evidence, front, report

OBJECTIVES = ("val_dice", "val_f2", "val_f2_tuned")
OVER_LATENCY_BUDGET = front.OVER_LATENCY_BUDGET


def trials_table(tuner: keras_tuner.Tuner, objective: str) -> pd.DataFrame:
    """One row per trial: id, every hyperparameter, score, epochs, status and duration."""
    rows = []
    for trial in tuner.oracle.trials.values():
        values = trial.hyperparameters.values
        timing_path = Path(tuner.get_trial_dir(trial.trial_id)) / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        row = {
            "trial_id": trial.trial_id,
            "status": trial.status,
            objective: trial.score if trial.score is not None else np.nan,
        }
        for metric in OBJECTIVES + ("val_dice_ship_images", "val_ship_accuracy", "val_ship_auc"):
            if metric != objective:
                row[metric] = (
                    trial.metrics.get_best_value(metric) if trial.metrics.exists(metric) else np.nan
                )
        row.update({name: value for name, value in values.items() if not name.startswith("tuner/")})
        # Hyperband sets each trial's epochs; random and Bayesian search train all alike.
        epochs = values.get("tuner/epochs", getattr(tuner, "trial_epochs", np.nan))
        row["epochs"] = epochs
        row["epochs_trained"] = epochs - values.get("tuner/initial_epoch", 0)
        # Keras Tuner counts best_step within this trial's fit, which starts at initial_epoch.
        row["best_epoch"] = (
            values.get("tuner/initial_epoch", 0) + trial.best_step + 1
            if trial.best_step is not None
            else np.nan
        )
        row["continued_from"] = values.get("tuner/trial_id", "")
        row["bracket"] = values.get("tuner/bracket", np.nan)
        row["duration_s"] = round(timing.get("seconds", np.nan), 2)
        row["fit_s"] = round(timing.get("fit_seconds", np.nan), 2)
        row["peak_memory_mib"] = round(timing.get("peak_memory_mib", np.nan), 1)
        row["tuner_id"] = timing.get("tuner_id", "")
        # A trial the time budget cut short still counts, with the epochs it finished.
        row["stopped_by_budget"] = bool(timing.get("stopped_by_budget", False))
        row["epochs_completed"] = timing.get("epochs_completed", np.nan)
        row.update(_latency_columns(timing))
        if row["over_latency_budget"]:  # never trained: its reported score is no score
            row.update({"status": OVER_LATENCY_BUDGET, objective: np.nan})
            row.update({"best_epoch": np.nan, "epochs_trained": 0})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(objective, ascending=False, na_position="last").reset_index(drop=True)


def hparams_record(row: pd.Series, objective: str, project_dir: Path, because: str) -> dict:
    """What ``best_hparams.json`` (or a file like it) holds of a trial's row of ``trials.csv``.

    Args:
        row: The trial's row.
        objective: The search's score column.
        project_dir: The search's folder.
        because: Why this trial was chosen, in words.
    """
    return {
        "trial_id": str(row.trial_id),
        "objective": objective,
        "score": None if pd.isna(row[objective]) else float(row[objective]),
        "chosen_because": because,
        "hyperparameters": {
            d.name: _value(d, row[d.name]) for d in space.DEFAULT_SPACE if d.name in row
        },
        "epochs": None if pd.isna(row.epochs) else int(row.epochs),
        "best_epoch": None if pd.isna(row.best_epoch) else int(row.best_epoch),
        "search_config": str((project_dir / "search_config.json").resolve()),
    }


def choose_trial(project_dir: Path, trial_id: str | None, max_latency_ms: float | None) -> Path:
    """Writes the hyperparameters of a named trial, or of the best one within a latency budget.

    The best within the budget is judged as the search's own winner is (``evidence``): among
    the completed trials timed at or under ``max_latency_ms``, the top score replaces the
    start only if it beats it on the same validation images.

    Args:
        project_dir: The search's folder (its ``trials.csv`` and ``search_config.json``).
        trial_id: A trial of ``trials.csv`` (any status), or None.
        max_latency_ms: The budget in milliseconds an image (the search's timing), or None.

    Returns:
        The written file (``trial_<id>_hparams.json`` or ``best_hparams_within_<ms>ms.json``),
        which ``train.py`` reads as it reads ``best_hparams.json``.

    Raises:
        errors.UserError: For an unknown trial, or no completed trial within the budget.
    """
    if trial_id is None and max_latency_ms is None:
        raise ValueError("choose_trial needs a trial id or a latency budget")
    config = atomic.read_json(project_dir / "search_config.json")
    objective, table = config["objective"], read_trials(project_dir)
    if trial_id is not None:
        rows = table[table.trial_id == trial_id]
        if rows.empty:
            raise errors.UserError(
                f"{project_dir / 'trials.csv'}: no trial {trial_id} (trials: "
                f"{', '.join(sorted(table.trial_id))})"
            )
        record = hparams_record(rows.iloc[0], objective, project_dir, "named with --trial")
        path = project_dir / f"trial_{trial_id}_hparams.json"
    else:
        record, path = _best_within(table, config, project_dir, max_latency_ms)
    atomic.write_json_atomically(path, record)
    print(f"Training trial {record['trial_id']} ({record['chosen_because']}): {path}")
    return path


def _best_within(table: pd.DataFrame, config: dict, project_dir: Path, max_ms: float) -> tuple:
    """The record and file name of the best completed trial within ``max_ms``."""
    objective = config["objective"]
    timed = evidence.completed(table, objective)
    if front.LATENCY_COLUMN not in timed or timed[front.LATENCY_COLUMN].isna().all():
        raise errors.UserError(
            f"{project_dir}: its trials were not timed (searched before 2026-12-07)"
        )
    untimed = int(timed[front.LATENCY_COLUMN].isna().sum())
    if untimed:
        print(f"{untimed} completed trials were not timed (searched before timing): left out")
    within = timed[timed[front.LATENCY_COLUMN] <= max_ms]
    if within.empty:
        fastest = timed[front.LATENCY_COLUMN].min()
        raise errors.UserError(
            f"--max-latency {max_ms:g} ms: no completed trial of {project_dir} is that fast "
            f"(the fastest: {fastest:.1f} ms an image)"
        )
    verdict = evidence.judge_winner(within, objective, project_dir, config.get("start_values"))
    row = within[within.trial_id.astype(str) == verdict["chosen"]].iloc[0]
    because = (
        f"within {max_ms:g} ms ({row[front.LATENCY_COLUMN]:.1f} ms): {verdict['chosen_because']}"
    )
    record = hparams_record(row, objective, project_dir, because)
    return record, project_dir / f"best_hparams_within_{max_ms:g}ms.json"


def read_trials(project_dir: Path) -> pd.DataFrame:
    """A search's ``trials.csv``, trial ids as text, best first."""
    path = project_dir / "trials.csv"
    if not path.is_file():
        raise errors.UserError(f"{path}: no trials to report on (run the search first)")
    return pd.read_csv(path, dtype={"trial_id": str, "continued_from": str})


def front_ids(trials: pd.DataFrame, objective: str) -> list:
    """The trials on the front of accuracy against latency, fastest first."""
    table = front.front_table(trials, objective)
    return list(table.trial_id[table.on_front]) if len(table) else []


def _latency_columns(timing: dict) -> dict:
    """A trial's latency columns (``latency.Latency.columns``), NaN where it was not timed."""
    fields = [field.name for field in dataclasses.fields(latency.Latency)]
    record = timing.get("latency") or dict.fromkeys(fields, np.nan)
    over = bool(timing.get("over_latency_budget", False))
    return {**latency.Latency(**record).columns(), "over_latency_budget": over}


def export_results(
    tuner: keras_tuner.Tuner, project_dir: Path, settings: dict, wall_seconds: float
) -> tuple[pd.DataFrame, dict | None]:
    """Writes ``trials.csv``, ``best_hparams.json``, ``trials.png`` and ``report.md``, atomically.

    Also writes ``search_summary.json`` (trial counts and times), even when no trial completed.

    Args:
        tuner: The search's tuner; its oracle's recorded trials are read, never its memory.
        project_dir: The search's project folder, where every file is written.
        settings: The search's ``search_config.json`` record (``SearchSettings.record``);
            its ``objective`` ranks the trials and names the score column.
        wall_seconds: This run's wall-clock time in ``tuner.search``, in seconds (a resumed
            search counts only its own run).

    Returns:
        The trials table and the content of ``best_hparams.json`` (None when no trial
        completed, in which case no such file is written).
    """
    objective = settings["objective"]
    trials = trials_table(tuner, objective)
    atomic.write_atomically(
        project_dir / "trials.csv", lambda temporary: trials.to_csv(temporary, index=False)
    )
    completed = evidence.completed(trials, objective)
    verdict = evidence.judge_winner(trials, objective, project_dir, settings.get("start_values"))
    best = None
    if verdict["chosen"] is not None:
        chosen = completed[completed.trial_id.astype(str) == verdict["chosen"]].iloc[0]
        best = hparams_record(chosen, objective, project_dir, verdict["chosen_because"])
        atomic.write_json_atomically(project_dir / "best_hparams.json", best)
        plot_trials(trials, objective, project_dir / "trials.png")
        budget_ms = latency.budget_ms(settings.get("max_latency"))
        names = [d.name for d in space.DEFAULT_SPACE]
        report.write_report(trials, objective, names, project_dir, verdict, budget_ms)
    summary = {
        "winner": {**verdict, "lines": evidence.verdict_lines(verdict)},
        "wall_seconds": round(wall_seconds, 2),
        "trial_seconds": round(float(trials.duration_s.sum()), 2) if len(trials) else 0.0,
        "fit_seconds": round(float(trials.fit_s.sum()), 2) if len(trials) else 0.0,
        "trials": int(len(trials)),
        "completed": int(len(completed)),
        "failed": int((trials.status == "FAILED").sum()) if len(trials) else 0,
        "over_latency_budget": int(trials.over_latency_budget.sum()) if len(trials) else 0,
        "front": [str(t) for t in front_ids(trials, objective)],
    }
    atomic.write_json_atomically(project_dir / "search_summary.json", summary)
    return trials, best


def _plain(value):
    """Converts a numpy scalar to a plain Python value for JSON."""
    return value.item() if hasattr(value, "item") else value


def _value(dimension: space.Dimension, value):
    """A hyperparameter's value from a table as the space holds it (a CSV's 4.0 is 4)."""
    value = _plain(value)
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in dimension.values)
    if whole and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def plot_trials(trials: pd.DataFrame, objective: str, path: Path) -> None:
    """Scores per trial, by learning rate and by depth and filters; saved atomically.

    Args:
        trials: ``trials_table``'s table; rows without a score are left out. Needs
            ``trial_id`` (numeric strings), ``epochs``, ``learning_rate``, ``levels`` and
            ``base_filters`` columns besides ``objective``.
        objective: The score column plotted (``val_dice``, ``val_f2``, ...).
        path: The PNG file to write (``trials.png`` in the project).
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = trials[trials[objective].notna()]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    order = done.trial_id.astype(int)
    scatter = axes[0].scatter(order, done[objective], c=done.epochs, cmap="viridis", s=40)
    figure.colorbar(scatter, ax=axes[0], label="epochs (its training budget)")
    axes[0].set(title="Score of each trial", xlabel="trial id", ylabel=objective)
    axes[1].scatter(done.learning_rate, done[objective], c=done.epochs, cmap="viridis", s=40)
    axes[1].set(
        xscale="log",
        title="Score against learning rate",
        xlabel="learning rate (log)",
        ylabel=objective,
    )
    # Minor log ticks get labels too by default, which overlap on a narrow range.
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    labels = done.levels.astype(str) + " x " + done.base_filters.astype(str)
    best_by_shape = done.assign(shape=labels).groupby("shape")[objective].max().sort_index()
    axes[2].bar(best_by_shape.index, best_by_shape.values, color="steelblue")
    axes[2].set(
        title="Best score by depth x base filters",
        xlabel="levels x base filters",
        ylabel=f"best {objective}",
    )
    figure.tight_layout()
    atomic.write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=90, format="png"))
    plt.close(figure)


def print_summary(trials: pd.DataFrame, project_dir: Path, objective: str, top: int = 5) -> None:
    """Prints the best trials as a table and where the results are.

    Args:
        trials: ``trials_table``'s table, best first (``export_results`` returns it); empty
            prints that no trial ran.
        project_dir: The search's project folder, named as where the results are; its parent
            is given as TensorBoard's ``--logdir`` so every project's runs show side by side.
        objective: The score column shown beside the hyperparameters.
        top: How many of the first rows to print.
    """
    if trials.empty:
        print("No trial ran.")
        return
    columns = [
        "trial_id",
        objective,
        *[d.name for d in space.DEFAULT_SPACE],
        "epochs",
        "status",
        "duration_s",
        front.LATENCY_COLUMN,
    ]
    with pd.option_context(
        "display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format
    ):
        print(f"\nBest {min(top, len(trials))} of {len(trials)} trials (by {objective}):")
        print(trials[columns].head(top).to_string(index=False))
    summary = project_dir / "search_summary.json"
    if summary.is_file():
        print("\nHow sure is the winner (report.md says more):")
        print("\n".join(atomic.read_json(summary).get("winner", {}).get("lines", [])))
    print(
        f"\nResults in {project_dir}: trials.csv, best_hparams.json, trials.png, report.md; "
        f"TensorBoard: tensorboard --logdir {project_dir.parent}"
    )


def remove_previous_results(project_dir: Path) -> None:
    """Deletes an earlier search's result files and logs before a fresh start.

    Keras Tuner's ``overwrite`` only clears its own folder; stale ``best_hparams.json`` or
    TensorBoard runs with the same trial ids would otherwise mix with the new search.
    """
    for name in (
        "best_hparams.json",
        "trials.csv",
        "trials.png",
        "search_summary.json",
        "split.csv",
        "overlaps.csv",
        "report.md",
        "importance.png",
        "front.png",
        "budget.json",
    ):
        (project_dir / name).unlink(missing_ok=True)
    for chosen in (
        *project_dir.glob("trial_*_hparams.json"),
        *project_dir.glob("best_hparams_*.json"),
    ):
        chosen.unlink()
    for name in ("logs", "tuner", "final", "final.partial", "final.previous", "folds"):
        shutil.rmtree(project_dir / name, ignore_errors=True)
