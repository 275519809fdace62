"""Wall-clock medians, peak memory of a block, this machine's matmul peak and its description."""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

import psutil


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeats` runs after `warmup` runs.

    >>> median_time(lambda: None, repeats=3) < 0.1
    True
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class PeakRSS:
    """Peak resident memory of this process while a block runs (sampled every 5 ms).

    >>> with PeakRSS() as memory:
    ...     block = bytearray(64 << 20)
    >>> memory.peak_mb - memory.start_mb > 50
    True
    """

    def __init__(self, interval_s: float = 0.005):
        self._interval = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.start_mb = self.peak_mb = 0.0

    def _rss_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.peak_mb = self._rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())


def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Measured GFLOP/s of an `n x n` by `n x n` matrix product in `dtype`.

    The best of `repeats` runs (a peak, unlike the medians elsewhere).
    """
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal([n, n], [0, 1]), dtype)
    b = tf.cast(tf.random.stateless_normal([n, n], [0, 2]), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    product().numpy()  # trace and warm up
    seconds = min(median_time(lambda: product().numpy(), 1, warmup=0) for _ in range(repeats))
    return 2 * n**3 / seconds / 1e9


def machine() -> dict:
    """CPU model, cores, memory and versions: where a figure was measured."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
