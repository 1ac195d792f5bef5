"""Shared pytest setup.

`slow` marks end-to-end tests that train or serve through subprocesses (tools/train.py
runs, multi-worker clusters, the e2e shapes model). CI runs them all (setup.cfg does not
deselect them); `python -m pytest -q tests -m "not slow"` is the quick local loop.

`shapes_data` is the shared synthetic dataset: `shapes_data(num_train, num_val, seed)`
returns `mnv2_det.data.shapes.generate`'s paths plus `'dir'`, written once per argument
set per pytest worker. It is shared between test files, so tests must not change it
(a test that corrupts, moves or adds files writes its own set with `shapes.generate`).
"""

import pytest


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: end-to-end test (training or serving subprocesses); '
      'deselect with -m "not slow"')


@pytest.fixture(scope='session')
def shapes_data(tmp_path_factory):
  """Factory of read-only shapes datasets (module docstring)."""
  from mnv2_det.data import shapes  # pylint: disable=g-import-not-at-top  # TF on use.
  cache = {}

  def make(num_train: int = 6, num_val: int = 2, seed: int = 5) -> dict:
    key = (num_train, num_val, seed)
    if key not in cache:
      out = str(tmp_path_factory.mktemp(f'shapes_{num_train}_{num_val}_{seed}'))
      cache[key] = dict(shapes.generate(out, num_train, num_val, seed), dir=out)
    return cache[key]

  return make
