"""Latency measurement shared by the benchmark subcommands (not used by tests)."""

import statistics
import time
from typing import Callable, Dict


def median_latency_ms(fn: Callable[[], object], warmup: int = 5, runs: int = 30) -> float:
  """Median wall time of `fn()` in milliseconds after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def interleaved_latency_ms(fns: Dict[str, Callable[[], object]], warmup: int = 5,
                           rounds: int = 5, runs: int = 10) -> Dict[str, float]:
  """Median latency per candidate, measured in alternating rounds so drift in machine
  load hits every candidate alike."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  samples = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples[name].append((time.perf_counter() - start) * 1e3)
  return {name: statistics.median(values) for name, values in samples.items()}


def print_table(title: str, latencies: Dict[str, float], reference: str):
  """Prints ms and the ratio of each row to `reference` (measured in the same run)."""
  print(f'\n{title}')
  base = latencies[reference]
  for name, ms in latencies.items():
    print(f'  {name:40s} {ms:9.2f} ms   {ms / base:6.2f}x of {reference}')
