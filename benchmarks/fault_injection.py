"""Fault injection: kill -9 of ``train.py`` and ``inference.py`` at random moments.

``train`` trains a tiny synthetic project once, then starts ``train.py --best`` again and kills
it with SIGKILL at a random moment, ``--kills`` times: after each kill the previous ``final/``
must be complete (config status "complete", metrics.json) and its model must load.

``inference`` runs ``inference.py`` over ``--images`` once uninterrupted, then again into another
folder killed halfway (by the first run's time) and rerun: the resumed ``submission.csv`` and
``images.csv`` must be byte-identical to the uninterrupted ones.

Usage:
    python benchmarks/fault_injection.py train [--kills 10]
    python benchmarks/fault_injection.py inference --images DIR --model PATH
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shipseg.core import runtime  # noqa: I001

runtime.import_tensorflow_quietly()

import keras

import hypermodel  # noqa: F401  (registers the losses a saved model needs)
from shipseg.data import synthetic


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def killed_at(command: list[str], seconds: float) -> bool:
    """Runs ``command`` and kills it after ``seconds``; whether it was still running then."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True


def final_is_complete(final: Path) -> str:
    config = json.loads((final / "config.json").read_text())
    json.loads((final / "metrics.json").read_text())
    keras.saving.load_model(final / "model.keras")
    return config["status"]


def train_kills(kills: int, seed: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="fault-injection-"))
    data = synthetic.generate_synthetic_dataset(
        work / "data", synthetic.SyntheticConfig(train_images=40, test_images=4, image_size=64)
    )
    tiny = ["--input-size", "32", "--images-per-epoch", "16", "--verbose", "0"]
    tiny += ["--hp", "levels=2", "--hp", "base_filters=4", "--hp", "batch_size=8"]
    results = ["--results-dir", str(work / "results")]
    search = [sys.executable, str(ROOT / "search.py"), "--data-dir", str(data), *results, *tiny]
    timed([*search, "--project", "tiny", "--max-epochs", "2", "--factor", "2"])
    train = [sys.executable, str(ROOT / "train.py"), *results, "--best", "--project", "tiny"]
    train += ["--verbose", "0"]
    seconds = timed([*train, "--epochs", "3"])
    final = work / "results" / "tiny" / "final"
    rng = random.Random(seed)
    print("| kill | after (s) | still running | final/ after the kill |\n|---|---|---|---|")
    for kill in range(1, kills + 1):
        moment = rng.uniform(0.5, seconds)
        running = killed_at([*train, "--epochs", "3"], moment)
        print(f"| {kill} | {moment:.1f} | {running} | {final_is_complete(final)}, loads |")
    print(f"\nA whole training took {seconds:.1f} s; folder {work}")


def inference_kill(images: str, model: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="fault-injection-"))
    command = [sys.executable, str(ROOT / "inference.py"), images, "--model", model]
    whole, resumed = work / "whole", work / "resumed"
    seconds = timed([*command, "--out", str(whole)])
    running = killed_at([*command, "--out", str(resumed)], seconds / 2)
    done = len(list((resumed / "records").glob("*.json")))
    resume_seconds = timed([*command, "--out", str(resumed)])
    same = {
        name: (resumed / name).read_bytes() == (whole / name).read_bytes()
        for name in ("submission.csv", "images.csv")
    }
    print(f"uninterrupted: {seconds:.1f} s; killed after {seconds / 2:.1f} s (running: {running})")
    print(f"images done before the kill: {done}; the resumed run took {resume_seconds:.1f} s")
    print(f"byte-identical to the uninterrupted run: {same}; folder {work}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("train", "inference"))
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", help="inference: images to predict")
    parser.add_argument("--model", help="inference: the model")
    options = parser.parse_args()
    if options.target == "train":
        train_kills(options.kills, options.seed)
    else:
        inference_kill(options.images, options.model)


if __name__ == "__main__":
    main()
