"""Benchmark of the training input: throughput on the real sample, peak memory versus dataset size.

(a) Throughput: ``pipeline.training_dataset`` on the train split of the real Airbus sample,
    256 x 256 crops with masks and augmentation, batches of 8 as in training; a few warm-up batches
    are skipped, then about 100 batches are timed.
(b) Memory: the RSS high-water mark of a fresh process that iterates the same number of training
    batches over a synthetic dataset and over one 10 times larger (100 versus 1000 images of
    256 px by default, generated into a temporary folder). The input reads images from disk as
    needed, so the peak should not grow with the number of images.

Usage:
    python benchmarks/pipeline_benchmark.py [--data-dir DIR] [--batches 100] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pipeline
from shipseg.core import errors
from shipseg.data import airbus, splits, synthetic

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "airbus-sample"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="real Airbus sample (default: ../shared/data/airbus-sample next to the repository)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=100, help="timed batches (and memory run)")
    parser.add_argument("--warmup", type=int, default=5, help="batches skipped before timing")
    parser.add_argument("--small", type=int, default=100, help="images in the small synthetic set")
    parser.add_argument("--large", type=int, default=1000, help="images in the large synthetic set")
    parser.add_argument("--synthetic-size", type=int, default=256, help="synthetic image side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def input_config(args) -> pipeline.InputConfig:
    return pipeline.InputConfig(mode="crop", size=args.crop_size, augment=True)


def batches(table, args):
    import tensorflow as tf

    dataset = pipeline.training_dataset(table, input_config(args), seed=args.seed)
    return iter(dataset.batch(args.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def measure_throughput(args) -> dict:
    """Images per second of the training input on the real sample's train split."""
    table = airbus.read_dataset(args.data_dir, log=lambda message: print(f"  {message}"))
    split = splits.make_split(table, seed=args.seed)
    train = splits.select_split(table, split, "train")
    stream = batches(train, args)
    start = time.perf_counter()
    for _ in range(args.warmup):
        next(stream)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.batches):
        images, masks = next(stream)
    elapsed = time.perf_counter() - start
    assert images.shape == (args.batch_size, args.crop_size, args.crop_size, 3)
    assert masks.shape == (args.batch_size, args.crop_size, args.crop_size, 1)
    return {
        "train_images": len(train),
        "with_ships": int((train.ship_count > 0).sum()),
        "warmup_s": warmup_s,
        "seconds": elapsed,
        "images_per_s": args.batches * args.batch_size / elapsed,
    }


def memory_status() -> dict[str, float]:
    """Current and peak RSS of this process in MiB, from /proc/self/status (Linux)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024  # kB
    return values


def memory_child(args) -> None:
    """Runs in a fresh process: iterate the batches, print the RSS high-water marks as JSON.

    The peak is read as VmHWM rather than ``getrusage(RUSAGE_SELF).ru_maxrss``: a child started
    by ``subprocess`` (vfork + exec) inherits the parent's ru_maxrss, so it would report the
    parent's peak (here the throughput run) instead of its own. The high-water mark is reset after
    setup (``/proc/self/clear_refs``) so that the iteration's own peak is measured as well.
    """
    if not Path("/proc/self/status").exists():  # not Linux: fall back to ru_maxrss
        stream = batches(airbus.read_dataset(args.memory_child), args)
        for _ in range(args.warmup + args.batches):
            next(stream)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"setup_peak_mib": None, "setup_rss_mib": None, "peak_mib": peak}))
        return
    table = airbus.read_dataset(args.memory_child)
    stream = batches(table, args)
    setup = memory_status()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    for _ in range(args.warmup + args.batches):
        next(stream)
    after = memory_status()
    result = {
        "images": len(table),
        "setup_peak_mib": setup["VmHWM"],
        "setup_rss_mib": setup["VmRSS"],
        "peak_mib": max(setup["VmHWM"], after["VmHWM"]),
        "iteration_peak_mib": after["VmHWM"] if reset else None,
    }
    print(json.dumps(result))


def measure_memory(args, data_dir: Path) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        str(data_dir),
        "--batches",
        str(args.batches),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--crop-size",
        str(args.crop_size),
        "--seed",
        str(args.seed),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory run on {data_dir} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    rule = "-" * (width + 3 + max(len(value) for _, value in rows))
    print(rule)
    for name, value in rows:
        print(f"{name:<{width}} | {value}")
    print(rule)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:
        memory_child(args)
        return 0
    rows = [
        (
            "input",
            f"{args.crop_size} x {args.crop_size} crops + masks, augmented, batch "
            f"{args.batch_size}, {args.warmup} warm-up + {args.batches} timed batches",
        ),
        ("machine", f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"),
    ]
    if not args.skip_throughput:
        rows += throughput_rows(args)
    if not args.skip_memory:
        rows += memory_rows(args)
    print()
    print_table(rows)
    return 0


def throughput_rows(args) -> list[tuple[str, str]]:
    """(a): the training input's throughput on the real sample, as table rows."""
    print(f"(a) throughput on {args.data_dir} ...", flush=True)
    try:
        result = measure_throughput(args)
    except errors.DataError as error:
        print(f"  skipped: {error}")
        return [("(a) throughput", f"skipped (no sample: {error})")]
    return [
        ("(a) train split", f"{result['train_images']} images ({result['with_ships']} with ships)"),
        ("(a) warm-up", f"{result['warmup_s']:.2f} s for {args.warmup} batches"),
        (
            "(a) throughput",
            f"{result['images_per_s']:.1f} images/s "
            f"({1000 * result['seconds'] / args.batches:.1f} ms per batch)",
        ),
    ]


def memory_rows(args) -> list[tuple[str, str]]:
    """(b): peak memory of the input on a small and a large synthetic dataset, as table rows."""
    rows, peaks = [], {}
    with tempfile.TemporaryDirectory(prefix="pipeline-benchmark-") as temporary:
        for count in (args.small, args.large):
            print(f"(b) memory: {count} synthetic images of {args.synthetic_size} px ...")
            start = time.perf_counter()
            data_dir = synthetic.generate_synthetic_dataset(
                Path(temporary) / f"synthetic-{count}",
                synthetic.SyntheticConfig(
                    train_images=count,
                    test_images=0,
                    image_size=args.synthetic_size,
                    seed=args.seed,
                ),
            )
            print(f"    generated in {time.perf_counter() - start:.1f} s", flush=True)
            peaks[count] = measure_memory(args, data_dir)
            rows.append((f"(b) peak RSS, {count} images", _peak_text(peaks[count])))
    small, large = peaks[args.small], peaks[args.large]
    ratio = large["peak_mib"] / small["peak_mib"]
    rows.append((f"(b) peak ratio {args.large} / {args.small}", f"{ratio:.2f} (1.00 = flat)"))
    if small.get("iteration_peak_mib") and large.get("iteration_peak_mib"):
        growth = [peak["iteration_peak_mib"] - peak["setup_rss_mib"] for peak in (small, large)]
        rows.append(
            (
                "(b) growth while iterating",
                f"{growth[0]:.0f} MiB ({args.small} images) vs "
                f"{growth[1]:.0f} MiB ({args.large} images)",
            )
        )
    return rows


def _peak_text(peak: dict) -> str:
    detail = ""
    if peak["setup_rss_mib"] is not None:
        detail = f" (RSS {peak['setup_rss_mib']:.0f} MiB after setup"
        if peak["iteration_peak_mib"] is not None:
            detail += f", peak while iterating {peak['iteration_peak_mib']:.0f} MiB"
        detail += ")"
    return f"{peak['peak_mib']:.0f} MiB{detail}"


if __name__ == "__main__":
    sys.exit(main())
