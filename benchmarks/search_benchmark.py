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
from shipseg.data import synthetic
from shipseg.search import tuning
from shipseg.search.run import run_search
from shipseg.search.settings import settings_from


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
    probe = MemoryProbe()
    probe.install()
    start = time.perf_counter()
    args = search.build_parser().parse_args(search_arguments(data_dir, work, options))
    run_search(settings_from(vars(args)))
    total = time.perf_counter() - start
    summary = json.loads((work / "results" / "bench" / "search_summary.json").read_text())
    print_report(probe, summary, total)


class MemoryProbe:
    """Resident memory after each trial: the search process's, and all the search's processes'."""

    def __init__(self) -> None:
        self.memory, self.total_memory, self.trial_peaks, self.seconds = [], [], [], []

    def install(self) -> None:
        """Measures after ``IsolatedTuner.on_trial_end``, for the rest of this process."""
        original_on_trial_end = tuning.IsolatedTuner.on_trial_end
        probe = self

        def on_trial_end(tuner, trial):
            original_on_trial_end(tuner, trial)
            probe.measure(Path(tuner.get_trial_dir(trial.trial_id)))

        tuning.IsolatedTuner.on_trial_end = on_trial_end

    def measure(self, trial_dir: Path) -> None:
        start = time.perf_counter()
        gc.collect()
        search_process = psutil.Process()
        helpers = sum(child.memory_info().rss for child in search_process.children(recursive=True))
        timing = json.loads((trial_dir / "timing.json").read_text())
        self.trial_peaks.append(timing["peak_memory_mib"])
        self.memory.append(search_process.memory_info().rss / 2**20)
        self.total_memory.append(self.memory[-1] + helpers / 2**20 + max(self.trial_peaks))
        print(
            f"[benchmark] trial {len(self.memory)} done: search process {self.memory[-1]:.0f} "
            f"MiB, trial process peak {self.trial_peaks[-1]:.0f} MiB, all processes "
            f"{self.total_memory[-1]:.0f} MiB",
            flush=True,
        )
        self.seconds.append(time.perf_counter() - start)


def search_arguments(data_dir: Path, work: Path, options: argparse.Namespace) -> list[str]:
    """``search.py``'s arguments: tiny U-Nets on 32-pixel inputs, so that trials are short."""
    return [
        *("--data-dir", str(data_dir), "--results-dir", str(work / "results")),
        *("--project", "bench", "--input-size", "32", "--images-per-epoch", "32"),
        *("--max-epochs", str(options.max_epochs), "--factor", str(options.factor)),
        *("--hp", "levels=2:3", "--hp", "base_filters=4,8", "--hp", "batch_size=8"),
        *("--verbose", "0", "--overwrite"),
    ]


def print_report(probe: MemoryProbe, summary: dict, total: float) -> None:
    """The measures as a Markdown table."""
    memory, trial_peaks = probe.memory, probe.trial_peaks
    print("\n| measure | value |\n|---|---|")
    print(f"| trials | {len(memory)} |")
    if len(memory) >= 30:
        for label, values in (
            ("search process", memory),
            (
                "all search processes (search + fork server + largest trial process)",
                probe.total_memory,
            ),
        ):
            print(f"| {label}: RSS after trial 3 | {values[2]:.0f} MiB |")
            print(f"| {label}: RSS after trial 30 | {values[29]:.0f} MiB |")
            print(f"| {label}: ratio trial 30 / trial 3 | {values[29] / values[2]:.3f} |")
        print(
            f"| trial process peak RSS: trial 3, trial 30 | {trial_peaks[2]:.0f}, "
            f"{trial_peaks[29]:.0f} MiB |"
        )
    print(f"| search process RSS after the last trial ({len(memory)}) | {memory[-1]:.0f} MiB |")
    wall = summary["wall_seconds"] - sum(probe.seconds)
    print(f"| search wall time (tuner.search, without this benchmark's probes) | {wall:.1f} s |")
    print(
        f"| this benchmark's memory probes (gc + RSS, after each trial) | {sum(probe.seconds):.1f} s |"
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
