"""Memory across trials and the search's overhead, on small synthetic images.

Runs a Hyperband search of at least 30 trials (tiny U-Nets on 64-pixel images, so that the
trials are short and any per-trial leak or overhead stands out) and reports:

* the process's resident memory after trial 3 and after trial 30 (and their ratio);
* the search's wall time against the sum of its trials' run times.

Usage: python benchmarks/search_benchmark.py [--work-dir DIR] [--max-epochs 10]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402
import search  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work-dir", help="where data and results go (default: a temporary folder)"
    )
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--factor", type=int, default=3)
    options = parser.parse_args()
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="search-benchmark-"))
    data_dir = work / "data"
    if not data_dir.exists():
        pipeline.generate_synthetic_dataset(
            data_dir,
            pipeline.SyntheticConfig(train_images=120, test_images=0, image_size=64, seed=1),
        )
    memory = []
    original_on_trial_end = search.TimedHyperband.on_trial_end

    def on_trial_end(self, trial):
        original_on_trial_end(self, trial)
        gc.collect()
        memory.append(psutil.Process().memory_info().rss / 2**20)
        print(f"[benchmark] trial {len(memory)} done: RSS {memory[-1]:.0f} MiB", flush=True)

    search.TimedHyperband.on_trial_end = on_trial_end
    args = search.build_parser().parse_args(
        [
            "--data-dir",
            str(data_dir),
            "--results-dir",
            str(work / "results"),
            "--project",
            "bench",
            "--input-size",
            "32",
            "--images-per-epoch",
            "32",
            "--max-epochs",
            str(options.max_epochs),
            "--factor",
            str(options.factor),
            "--hp",
            "levels=2:3",
            "--hp",
            "base_filters=4,8",
            "--hp",
            "batch_size=8",
            "--verbose",
            "0",
            "--overwrite",
        ]
    )
    start = time.perf_counter()
    search.run_search(args)
    total = time.perf_counter() - start
    summary = json.loads((work / "results" / "bench" / "search_summary.json").read_text())

    print("\n| measure | value |\n|---|---|")
    print(f"| trials | {len(memory)} |")
    if len(memory) >= 30:
        print(f"| RSS after trial 3 | {memory[2]:.0f} MiB |")
        print(f"| RSS after trial 30 | {memory[29]:.0f} MiB |")
        print(f"| ratio trial 30 / trial 3 | {memory[29] / memory[2]:.3f} |")
    print(f"| RSS after the last trial ({len(memory)}) | {memory[-1]:.0f} MiB |")
    print(f"| search wall time (tuner.search) | {summary['wall_seconds']:.1f} s |")
    print(f"| sum of trial times | {summary['trial_seconds']:.1f} s |")
    print(f"| wall / sum of trials | {summary['wall_seconds'] / summary['trial_seconds']:.3f} |")
    print(f"| whole command incl. data reading and result export | {total:.1f} s |")


if __name__ == "__main__":
    main()
