"""Shared pytest setup.

`slow` marks end-to-end tests that train or serve through subprocesses (tools/train.py
runs, multi-worker clusters, the e2e shapes model). CI runs them all (setup.cfg does not
deselect them); `python -m pytest -q tests -m "not slow"` is the quick local loop.
"""


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: end-to-end test (training or serving subprocesses); '
      'deselect with -m "not slow"')
