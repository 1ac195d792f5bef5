"""Resident memory of a process from /proc (Linux); standard library only.

Imported by the TensorFlow benchmarks and by the torch-venv scripts in accuracy/.
"""


def vm_rss_bytes(pid='self') -> int:
  """VmRSS of `pid` ('self': this process) in bytes; 0 if it has none (kernel threads).

  Raises OSError when the process is gone or unreadable.
  """
  with open(f'/proc/{pid}/status', encoding='utf-8') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024  # kB
  return 0
