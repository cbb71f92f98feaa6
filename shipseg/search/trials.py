"""What a search leaves behind: ``trials.csv``, ``best_hparams.json``, ``trials.png``, a summary.

Read from the tuner's state after (or during) a search, never from the search's own memory, so
that a resumed or distributed search exports exactly what Keras Tuner recorded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras_tuner
import numpy as np
import pandas as pd

from shipseg.core import atomic
from shipseg.model import space
from shipseg.search import evidence, report

OBJECTIVES = ("val_dice", "val_f2", "val_f2_tuned")


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
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(objective, ascending=False, na_position="last").reset_index(drop=True)


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
    completed = (
        trials[(trials.status == "COMPLETED") & trials[objective].notna()]
        if len(trials)
        else trials
    )
    verdict = evidence.judge_winner(trials, objective, project_dir, settings.get("start_values"))
    best = None
    if verdict["chosen"] is not None:
        chosen = completed[completed.trial_id.astype(str) == verdict["chosen"]].iloc[0]
        names = [d.name for d in space.DEFAULT_SPACE]
        best = {
            "trial_id": chosen.trial_id,
            "objective": objective,
            "score": float(chosen[objective]),
            "chosen_because": verdict["chosen_because"],
            "hyperparameters": {name: _plain(chosen[name]) for name in names},
            "epochs": int(chosen.epochs),
            "best_epoch": int(chosen.best_epoch),
            "search_config": str((project_dir / "search_config.json").resolve()),
        }
        atomic.write_json_atomically(project_dir / "best_hparams.json", best)
        plot_trials(trials, objective, project_dir / "trials.png")
        report.write_report(trials, objective, names, project_dir, verdict)
    summary = {
        "winner": {**verdict, "lines": evidence.verdict_lines(verdict)},
        "wall_seconds": round(wall_seconds, 2),
        "trial_seconds": round(float(trials.duration_s.sum()), 2) if len(trials) else 0.0,
        "fit_seconds": round(float(trials.fit_s.sum()), 2) if len(trials) else 0.0,
        "trials": int(len(trials)),
        "completed": int(len(completed)),
        "failed": int((trials.status == "FAILED").sum()) if len(trials) else 0,
    }
    atomic.write_json_atomically(project_dir / "search_summary.json", summary)
    return trials, best


def _plain(value):
    """Converts a numpy scalar to a plain Python value for JSON."""
    return value.item() if hasattr(value, "item") else value


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
        "budget.json",
    ):
        (project_dir / name).unlink(missing_ok=True)
    for name in ("logs", "tuner", "final", "final.partial", "final.previous", "folds"):
        shutil.rmtree(project_dir / name, ignore_errors=True)
