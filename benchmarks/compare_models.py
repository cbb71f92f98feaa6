"""Two trained models on the same test images: each one's gain over "no ship", and their gap.

A score with an interval says how well one model did on its test split; whether a searched
model beats a hand-made one needs the difference image by image, because both move together
with the draw of images (on ~108 test images a single F2 moves by about 0.04). Both models
must come from trainings on the same split (the same ``--seed`` and data); each is scored with
its own tuned post-processing from its ``config.json``, as ``train.py`` scored it.

Usage: python benchmarks/compare_models.py results/searched/final results/hand/final
    [--out comparison.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

from shipseg.core import atomic, errors
from shipseg.model import loading
from shipseg.predict import deploy, detection, prediction
from shipseg.scoring import metrics


def main() -> None:
    options = build_parser().parse_args()
    try:
        comparison = compare(Path(options.first), Path(options.second))
    except errors.UserError as error:
        sys.exit(f"error: {error}")
    first, second = comparison["first"], comparison["second"]
    for name, scored in (("first", first), ("second", second)):
        low, high = scored["gain_interval"]
        print(
            f"{name:6} {scored['model']}: F2 {scored['f2']:.3f}, over no ship "
            f"{scored['gain']:+.3f} [{low:+.3f}, {high:+.3f}]"
        )
    low, high = comparison["difference_interval"]
    print(
        f"first - second: {comparison['difference']:+.3f} [{low:+.3f}, {high:+.3f}] "
        f"over {comparison['images']} test images (baseline {comparison['baseline']:.3f})"
    )
    if options.out:
        atomic.write_json_atomically(Path(options.out), comparison)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="a trained model.keras, or the final/ folder holding it")
    parser.add_argument("second", help="the model to compare it with, trained on the same split")
    parser.add_argument("--out", help="also write the comparison to this JSON file")
    return parser


def compare(first: Path, second: Path) -> dict:
    """Both models' per-image test F2, their gains over no ship and their paired difference.

    The per-image scores are kept in the result, so a later comparison with a third model on
    the same split needs no retraining of these two.

    Raises:
        UserError: For a missing model or config, or two models tested on different images.
    """
    (first_summary, ids, f2, baseline), (second_summary, other_ids, other_f2, _) = (
        score_on_test(path) for path in (first, second)
    )
    if ids != other_ids:
        raise errors.UserError(
            f"{first} and {second} were tested on different images: train both with the same "
            "--seed on the same data"
        )
    gap = metrics.bootstrap_intervals(f2, other_f2)["gain"]
    return {
        "first": first_summary,
        "second": second_summary,
        "difference": round(float(np.mean(f2 - other_f2)), 4),
        "difference_interval": [round(v, 4) for v in gap],
        "images": len(baseline),
        "baseline": round(float(np.mean(baseline)), 4),
        "per_image": {
            "ImageId": ids,
            "first_f2": [round(float(v), 4) for v in f2],
            "second_f2": [round(float(v), 4) for v in other_f2],
            "no_ship_f2": [float(v) for v in baseline],
        },
    }


def score_on_test(path: Path) -> tuple[dict, list[str], np.ndarray, np.ndarray]:
    """One model's test split, scored image by image with its tuned post-processing.

    Returns:
        Its summary (``model``, ``f2``, ``gain`` and ``gain_interval``), the test ImageIds, and
        each image's F2 and no-ship F2 in that order.
    """
    model_path = path / "model.keras" if path.is_dir() else path
    model = loading.load_model(loading.find_model(ROOT / "results", str(model_path)))
    config_path = model_path.parent / "config.json"
    if not config_path.is_file() or not atomic.read_json(config_path).get("split_file"):
        raise errors.UserError(f"{config_path}: no training record with a split beside the model")
    table = deploy.held_out_table(atomic.read_json(config_path))
    input_config, postprocess = detection.load_settings(model_path)
    board = prediction.scoreboard_for(model, table, input_config, postprocess, 2)
    f2, baseline = np.asarray(board.f2_scores), np.asarray(board.baseline_f2_scores)
    gain = metrics.bootstrap_intervals(f2, baseline)["gain"]
    summary = {
        "model": str(model_path),
        "f2": round(float(f2.mean()), 4),
        "gain": round(float((f2 - baseline).mean()), 4),
        "gain_interval": [round(v, 4) for v in gain],
    }
    return summary, table.ImageId.tolist(), f2, baseline


if __name__ == "__main__":
    main()
