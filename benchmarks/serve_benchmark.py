"""The service's throughput and latency against ``inference.py`` on the same images and model.

Starts ``serve.py`` on 127.0.0.1, sends every image once per level of concurrency (1, 4 and 16
clients by default, each client posting its next image as soon as it has an answer), and
reports requests per second, p50 and p95 latency and the server's peak RSS (its process and
children, sampled every 50 ms). Then runs ``inference.py`` on the same files with the same
model (``--no-overlays``: the service draws no overlay unless asked) and reports its own
images per second, so both figures come from one run on one machine.

Usage: python benchmarks/serve_benchmark.py [--model PATH] [--images DIR] [--count 48]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shipseg.data import airbus  # noqa: E402
from shipseg.model import loading


def main() -> None:
    options = build_parser().parse_args()
    paths = airbus.list_images([options.images])[: options.count]
    model = loading.find_model(ROOT / "results", options.model)
    bodies = [path.read_bytes() for path in paths]
    rows, peak = serve_rows(model, bodies, options)
    inference_rate = inference_images_per_second(model, paths)
    print(f"\n{len(paths)} images from {options.images}, model {model}")
    print("| clients | requests/s | p50 latency (s) | p95 latency (s) | vs inference.py |")
    print("|---|---|---|---|---|")
    for clients, rate, p50, p95 in rows:
        print(f"| {clients} | {rate:.2f} | {p50:.3f} | {p95:.3f} | {rate / inference_rate:.2f}x |")
    print(f"inference.py on the same images: {inference_rate:.2f} images/s")
    print(f"server peak RSS (process and children): {peak / 2**30:.2f} GiB")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="default: the latest results/*/final/model.keras")
    sample = ROOT.parent / "shared" / "data" / "airbus-sample" / "images"
    parser.add_argument("--images", default=str(sample))
    parser.add_argument("--count", type=int, default=48, help="images sent per level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch", type=int, default=8)
    return parser


def serve_rows(model: Path, bodies: list[bytes], options) -> tuple[list[tuple], int]:
    """``(clients, requests/s, p50, p95)`` per level of concurrency, and the peak RSS."""
    port = free_port()
    command = [sys.executable, str(ROOT / "serve.py"), "--model", str(model), "--port", str(port)]
    server = subprocess.Popen([*command, "--max-batch", str(options.max_batch)], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        wait_until_ready(f"http://127.0.0.1:{port}/health")
        post(url, bodies[0])  # warm-up: the first call traces the network
        probe = PeakMemory(server.pid)
        rows = [(clients, *load(url, bodies, clients)) for clients in options.clients]
        return rows, probe.stop()
    finally:
        server.terminate()
        server.wait(timeout=60)


def load(url: str, bodies: list[bytes], clients: int) -> tuple[float, float, float]:
    """Sends every body once from ``clients`` threads: requests/s, p50 and p95 latency."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(lambda body: post(url, body), bodies))
    seconds = time.perf_counter() - start
    return len(bodies) / seconds, *np.percentile(latencies, [50, 95])


def post(url: str, body: bytes) -> float:
    """One request's latency in seconds; fails loudly on anything but 200."""
    request = urllib.request.Request(url, body, {"Content-Type": "image/jpeg"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status}")
    return time.perf_counter() - start


def inference_images_per_second(model: Path, paths: list[Path]) -> float:
    """``inference.py``'s own images/s (its predicting loop, without start-up)."""
    out = tempfile.mkdtemp(prefix="serve-benchmark-")
    command = [sys.executable, str(ROOT / "inference.py"), *map(str, paths), "--model", str(model)]
    result = subprocess.run(
        [*command, "--out", out, "--no-overlays"], cwd=ROOT, capture_output=True, text=True
    )
    found = re.search(r"\(([\d.]+) images/s\)", result.stdout)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"inference.py failed: {result.stderr[-2000:]}")
    return float(found.group(1))


class PeakMemory:
    """Samples a process tree's RSS every 50 ms on a thread until ``stop``."""

    def __init__(self, pid: int):
        self.process, self.peak, self._done = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            tree = [self.process, *self.process.children(recursive=True)]
            self.peak = max(self.peak, sum(p.memory_info().rss for p in tree if p.is_running()))

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(url: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url}: the server did not start")


if __name__ == "__main__":
    main()
