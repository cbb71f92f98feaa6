"""Memory across trials and the search's overhead, on small synthetic images.

Runs a Hyperband search of at least 30 trials (tiny U-Nets on 64-pixel images, so that the
trials are short and any per-trial leak or overhead stands out) and reports:

* resident memory after trial 3 and after trial 30 (and their ratio): of the search process,
  and of all the search's processes together (the search, the fork server that starts trial
  processes, and the largest trial process so far, each trial runs in a process of its own);
* the search's wall time against the sum of its trials' fit times (and their whole run times,
  which add starting the trial process and building the model).

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

import search
from shipseg import synthetic, tuning


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
        synthetic.generate_synthetic_dataset(
            data_dir,
            synthetic.SyntheticConfig(train_images=120, test_images=0, image_size=64, seed=1),
        )
    memory, total_memory, trial_peaks = [], [], []
    original_on_trial_end = tuning.IsolatedHyperband.on_trial_end

    probe_seconds = []

    def on_trial_end(self, trial):
        original_on_trial_end(self, trial)
        probe_start = time.perf_counter()
        gc.collect()
        search_process = psutil.Process()
        helpers = sum(child.memory_info().rss for child in search_process.children(recursive=True))
        timing = json.loads((Path(self.get_trial_dir(trial.trial_id)) / "timing.json").read_text())
        trial_peaks.append(timing["peak_memory_mib"])
        memory.append(search_process.memory_info().rss / 2**20)
        total_memory.append(memory[-1] + helpers / 2**20 + max(trial_peaks))
        print(
            f"[benchmark] trial {len(memory)} done: search process {memory[-1]:.0f} MiB, "
            f"trial process peak {trial_peaks[-1]:.0f} MiB, all processes {total_memory[-1]:.0f} MiB",
            flush=True,
        )
        probe_seconds.append(time.perf_counter() - probe_start)

    tuning.IsolatedHyperband.on_trial_end = on_trial_end
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
        for label, values in (
            ("search process", memory),
            ("all search processes (search + fork server + largest trial process)", total_memory),
        ):
            print(f"| {label}: RSS after trial 3 | {values[2]:.0f} MiB |")
            print(f"| {label}: RSS after trial 30 | {values[29]:.0f} MiB |")
            print(f"| {label}: ratio trial 30 / trial 3 | {values[29] / values[2]:.3f} |")
        print(
            f"| trial process peak RSS: trial 3, trial 30 | {trial_peaks[2]:.0f}, "
            f"{trial_peaks[29]:.0f} MiB |"
        )
    print(f"| search process RSS after the last trial ({len(memory)}) | {memory[-1]:.0f} MiB |")
    wall = summary["wall_seconds"] - sum(probe_seconds)
    print(f"| search wall time (tuner.search, without this benchmark's probes) | {wall:.1f} s |")
    print(
        f"| this benchmark's memory probes (gc + RSS, after each trial) | {sum(probe_seconds):.1f} s |"
    )
    print(f"| sum of trial fit times | {summary['fit_seconds']:.1f} s |")
    print(f"| wall / sum of fit times | {wall / summary['fit_seconds']:.3f} |")
    print(
        f"| sum of whole trial times (process start, build, fit) | {summary['trial_seconds']:.1f} s |"
    )
    print(f"| wall / sum of whole trial times | {wall / summary['trial_seconds']:.3f} |")
    print(f"| whole command incl. data reading and result export | {total:.1f} s |")


if __name__ == "__main__":
    main()
