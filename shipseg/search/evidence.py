"""How far a search's winner can be trusted: paired margins, and whether cheap trials rank well.

A validation score on about a hundred images moves by several hundredths from the draw of
images alone, so "the best trial" is partly luck. Two questions make it honest:

* **Margins.** By how much does the winner beat the search's start (the trusted configuration
  of its first trial) and the runner-up (the best other configuration), image by image on the
  same validation images, with a 95 % bootstrap interval? An interval that holds zero means
  the two cannot be told apart.
* **Rank agreement.** Hyperband ranks configurations after a few epochs and trains only the
  best further. Spearman's rank correlation between the first rung's scores and the final
  scores of the configurations it promoted says whether the cheap rung ranks as training on
  does (near 1) or not (near 0).

Each trial's per-image scores at its best epoch are in ``tuner/trial_<id>/val_images.csv``
(``WholeImageValidation``); the start is ``search_config.json``'s ``start_values``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shipseg.model.space import DEFAULT_SPACE
from shipseg.scoring import metrics

# The per-image column that stands for each objective (per-image Dice for the pixel Dice).
IMAGE_COLUMNS = {"val_f2_tuned": "f2_tuned", "val_f2": "f2", "val_dice": "dice"}
IMAGE_SCORES = "val_images.csv"


def completed(trials: pd.DataFrame, objective: str) -> pd.DataFrame:
    """The trials that trained to a score: completed, with a value of ``objective``."""
    if trials.empty:
        return trials
    return trials[(trials.status == "COMPLETED") & trials[objective].notna()]


def image_scores(project_dir: Path, trial_id: str) -> pd.DataFrame | None:
    """One trial's per-image validation scores at its best epoch, or None if it has none."""
    path = Path(project_dir) / "tuner" / f"trial_{trial_id}" / IMAGE_SCORES
    return pd.read_csv(path) if path.is_file() else None


def paired_margin(first: pd.DataFrame, second: pd.DataFrame, column: str, seed: int = 0) -> dict:
    """``first`` minus ``second`` on the images both scored: mean and 95 % bootstrap interval.

    Args:
        first: Per-image scores (``ImageId`` and ``column``) of one trial.
        second: The same of another trial, on the same validation images.
        column: The score to compare (``f2_tuned``, ``f2`` or ``dice``).
        seed: Fixes the bootstrap draws.

    Returns:
        ``{"margin": float, "interval": [low, high], "images": int, "distinct": bool}``;
        ``distinct`` is False when the interval holds zero.
    """
    both = first[["ImageId", column]].merge(second[["ImageId", column]], on="ImageId")
    if both.empty:
        raise ValueError("the two trials share no validation image")
    a, b = both[f"{column}_x"].to_numpy(float), both[f"{column}_y"].to_numpy(float)
    low, high = metrics.bootstrap_intervals(a, b, seed=seed)["gain"]
    return {
        "margin": float(np.mean(a - b)),
        "interval": [float(low), float(high)],
        "images": len(both),
        "distinct": bool(low > 0 or high < 0),
    }


def same_configuration(row: pd.Series, values: dict) -> bool:
    """Whether a trial's row holds exactly ``values`` (numbers compared as numbers)."""
    for name, value in values.items():
        if name not in row:
            return False
        got = row[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            if str(got).lower() != str(value).lower():
                return False
        elif not np.isclose(float(got), float(value), rtol=1e-9, atol=0.0):
            return False
    return True


def rank_agreement(trials: pd.DataFrame, objective: str) -> dict | None:
    """Spearman's correlation of the first rung's scores with the final ones, over promotions.

    Each configuration Hyperband promoted is a chain of trials (``continued_from``); its first
    rung is the chain's first trial, its final score its last trial's.

    Returns:
        ``{"spearman": float, "configurations": int}``, or None for fewer than three chains.
    """
    from scipy.stats import spearmanr

    if "continued_from" not in trials:
        return None  # not Hyperband's table: no promotions to follow
    scored = trials[trials[objective].notna()]
    parents = dict(
        zip(scored.trial_id.astype(str), scored.continued_from.fillna("").astype(str), strict=True)
    )
    score = dict(zip(scored.trial_id.astype(str), scored[objective], strict=True))
    finals: dict[str, tuple[int, float]] = {}
    for trial_id in score:
        root, steps = trial_id, 0
        while parents.get(root) and parents[root] in score:
            root, steps = parents[root], steps + 1
        if steps and steps >= finals.get(root, (0, 0.0))[0]:
            finals[root] = (steps, score[trial_id])
    if len(finals) < 3:
        return None
    first = [score[root] for root in finals]
    final = [finals[root][1] for root in finals]
    rho = spearmanr(first, final).statistic
    return {"spearman": float(rho), "configurations": len(finals)}


def judge_winner(
    trials: pd.DataFrame, objective: str, project_dir: Path, start_values: dict | None
) -> dict:
    """The winner's margins over the start and the runner-up, and the rank agreement.

    Args:
        trials: ``trials.csv``'s table, best first (``trials.trials_table``).
        objective: The score the search ranked by; its per-image column is compared.
        project_dir: The search's folder (each trial's ``val_images.csv`` under ``tuner/``).
        start_values: The first trial's hyperparameters (``search_config.json``), or None.

    Returns:
        ``{"winner", "start", "runner_up": trial ids or None, "over_start", "over_runner_up":
        ``paired_margin`` dicts or None, "column": the per-image score compared,
        "rank_agreement": ``rank_agreement``'s dict or None, "chosen", "chosen_because": the
        trial ``train.py --best`` retrains and why (``chosen_trial``)}``.
    """
    column = IMAGE_COLUMNS[objective]
    verdict = {"winner": None, "start": None, "runner_up": None, "column": column}
    verdict.update(over_start=None, over_runner_up=None, rank_agreement=None)
    verdict.update(chosen=None, chosen_because="no completed trial")
    if trials.empty:
        return verdict
    scored = completed(trials, objective)
    verdict["rank_agreement"] = rank_agreement(trials, objective)
    if scored.empty:
        return verdict
    winner = scored.iloc[0]
    names = [d.name for d in DEFAULT_SPACE if d.name in trials]
    verdict["winner"] = str(winner.trial_id)
    start = [
        r for _, r in scored.iterrows() if start_values and same_configuration(r, start_values)
    ]
    others = [
        r
        for _, r in scored.iloc[1:].iterrows()
        if not same_configuration(r, winner[names].to_dict())
    ]
    for key, rival in (
        ("start", start[0] if start else None),
        ("runner_up", others[0] if others else None),
    ):
        if rival is None:
            continue
        verdict[key] = str(rival.trial_id)
        mine, theirs = (
            image_scores(project_dir, winner.trial_id),
            image_scores(project_dir, rival.trial_id),
        )
        if mine is not None and theirs is not None:
            verdict[f"over_{key}"] = paired_margin(mine, theirs, column)
    verdict["chosen"], verdict["chosen_because"] = chosen_trial(verdict)
    return verdict


def chosen_trial(verdict: dict) -> tuple[str | None, str]:
    """The trial ``train.py --best`` retrains, and why: the winner only on evidence.

    The start is the configuration the user trusted before searching. The winner is the
    highest of many noisy scores, so it beats the start by some margin even when it is no
    better (on the sample, 108 validation images move F2 by a few hundredths). A challenger
    therefore replaces the start only when its paired interval over the start is above zero.
    Without a start among the completed trials, or without per-image scores to pair (projects
    searched before they were kept), there is nothing to weigh: the best score stands, and
    the reason says so.
    """
    winner, start, margin = verdict["winner"], verdict["start"], verdict["over_start"]
    if winner is None:
        return None, "no completed trial"
    if start is None:
        return winner, "the best score (no start configuration among the completed trials)"
    if start == winner:
        return winner, "the best score, and the start"
    if margin is None:
        return winner, "the best score (no per-image scores to judge it against the start)"
    if margin["interval"][0] > 0:
        return winner, "it beats the start on the same validation images"
    return start, "the start: the winner cannot be told apart from it, so the trusted one stays"


def verdict_lines(verdict: dict) -> list[str]:
    """The verdict in words, for ``report.md``, the search's summary and ``train.py --best``."""
    if verdict["winner"] is None:
        return ["No completed trial: no winner to judge."]
    lines = []
    names = {"start": "the start (the first, trusted configuration)", "runner_up": "the runner-up"}
    for key, name in names.items():
        rival, margin = verdict[key], verdict[f"over_{key}"]
        if rival is None:
            lines.append(f"- {name.capitalize()}: not among the completed trials.")
        elif rival == verdict["winner"]:
            lines.append(f"- The winner is {name} (trial {rival}).")
        elif margin is None:
            lines.append(f"- Over {name}, trial {rival}: no per-image scores to compare.")
        else:
            low, high = margin["interval"]
            plain = "" if margin["distinct"] else ": the two cannot be told apart on these images"
            lines.append(
                f"- Over {name}, trial {rival}: {margin['margin']:+.3f} per-image "
                f"{verdict['column']} [95 %: {low:+.3f}, {high:+.3f}] on {margin['images']} "
                f"validation images{plain}."
            )
    if verdict.get("chosen"):
        lines.append(
            f"- `train.py --best` retrains trial {verdict['chosen']}: {verdict['chosen_because']}."
        )
    agreement = verdict["rank_agreement"]
    lines.append(
        "- Rank agreement of the first rung with the final scores: not measurable (fewer than "
        "three promoted configurations)."
        if agreement is None
        else f"- Rank agreement of the first rung with the final scores: Spearman "
        f"{agreement['spearman']:+.2f} over {agreement['configurations']} promoted configurations."
    )
    return lines
