"""PNG plots of a data_check report (matplotlib, Agg backend: no display needed).

  classes.png        boxes per class (crowd stacked on top)
  box_sizes.png      sqrt(box area) in network input pixels, COCO bucket limits marked
  aspect_ratios.png  box width / height in the input and the original images, the
                     anchors' aspect ratios marked
  coverage.png       share of boxes covered (best anchor IoU >= threshold) and covered
                     or force-matched, against box size, with the box counts
"""

import os
from typing import List

import matplotlib
matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import ticker  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from mnv2_det.analysis import anchor_coverage

PLOT_FILES = ('classes.png', 'box_sizes.png', 'aspect_ratios.png', 'coverage.png')
DPI = 100
FIGSIZE = (7.0, 4.0)
# classes.png grows by this many inches per class beyond MANY_CLASSES (names stay legible).
MANY_CLASSES = 12
INCHES_PER_CLASS = 0.15
ASPECT_TICKS = (1 / 8, 1 / 4, 1 / 3, 1 / 2, 1, 2, 3, 4, 8)
SIZE_TICKS = (2, 4, 8, 16, 32, 64, 96, 128, 256, 512, 1024, 2048)


def _bin_centres(edges: np.ndarray) -> np.ndarray:
  """Geometric centres of log bins; the open first / last bins get a half-octave."""
  lo = np.where(edges[:-1] > 0, edges[:-1], edges[1:] / np.sqrt(2))
  hi = np.where(np.isfinite(edges[1:]), edges[1:], edges[:-1] * np.sqrt(2))
  return np.sqrt(lo * hi)


def _log_ticks(ax, ticks, labels) -> None:
  ax.set_xscale('log')
  ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
  ax.xaxis.set_major_formatter(ticker.FixedFormatter(labels))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _size_axis(ax, report) -> None:
  """Log x axis of box sizes up to the input's side, COCO bucket limits dotted."""
  top = max(report['model']['input_size']) * 1.2
  ticks = [t for t in SIZE_TICKS if t <= top]
  _log_ticks(ax, ticks, [str(t) for t in ticks])
  ax.set_xlim(2, top)
  for limit in (np.sqrt(anchor_coverage.SMALL_MAX_AREA),
                np.sqrt(anchor_coverage.LARGE_MIN_AREA)):
    ax.axvline(limit, color='grey', linestyle=':', linewidth=1)


def _title(report: dict) -> str:
  m = report['model']
  return f'{os.path.basename(report["annotation_file"])}, ' \
         f'{m["input_size"][0]}x{m["input_size"][1]} {m["resize_mode"]}'


def _classes(report, ax) -> None:
  classes = report['classes']
  x = np.arange(len(classes))
  boxes = [c['boxes'] for c in classes]
  ax.bar(x, boxes, label='boxes')
  ax.bar(x, [c['crowd'] for c in classes], bottom=boxes, label='crowd')
  ax.set_xticks(x, [c['name'] for c in classes], rotation=90 if len(classes) > 12 else 0,
                fontsize=8 if len(classes) > 12 else 10)
  ax.set_ylabel('annotations')
  ax.legend()


def _sizes(report, ax) -> None:
  s = report['sizes']
  edges = np.array(s['side_edges'])
  centres = _bin_centres(edges)
  ax.bar(centres, s['side_counts'], width=centres * 0.3)
  _size_axis(ax, report)
  counts = s['input']
  ax.set_xlabel('sqrt(box area), network input pixels  (COCO small | medium | large: '
                f'{counts["small"]} | {counts["medium"]} | {counts["large"]})')
  ax.set_ylabel('boxes')


def _aspects(report, ax) -> None:
  a = report['aspect_ratios']
  edges = np.array(a['edges'])
  centres = np.sqrt(edges[:-1] * edges[1:])
  ax.step(centres, a['input']['counts'], where='mid', label='network input')
  ax.step(centres, a['original']['counts'], where='mid', label='original image',
          linestyle='--')
  for r in a['anchor_aspect_ratios']:
    ax.axvline(r, color='grey', linestyle=':', linewidth=1)
  _log_ticks(ax, ASPECT_TICKS, ['1/8', '1/4', '1/3', '1/2', '1', '2', '3', '4', '8'])
  ax.set_xlabel('box width / height (dotted: anchor aspect ratios)')
  ax.set_ylabel('boxes')
  ax.legend()


def _coverage(report, ax) -> None:
  c = report['anchor_coverage']
  edges = np.array(c['by_size_bin']['edges'])
  bins = c['by_size_bin']['bins']
  centres = _bin_centres(edges)
  keep = np.array([b['boxes'] > 0 for b in bins])
  covered = np.array([b['covered_share'] or 0.0 for b in bins])
  forced = np.array([b['force_only_share'] or 0.0 for b in bins])
  twin = ax.twinx()
  twin.bar(centres[keep], np.array([b['boxes'] for b in bins])[keep],
           width=centres[keep] * 0.3, color='lightgrey')
  twin.set_ylabel('boxes (grey bars)')
  ax.set_zorder(twin.get_zorder() + 1)
  ax.patch.set_visible(False)
  ax.plot(centres[keep], covered[keep], 'o-',
          label=f'best anchor IoU >= {c["match_threshold"]}')
  ax.plot(centres[keep], (covered + forced)[keep], 's--', label='or force-matched')
  ax.set_ylim(0, 1.02)
  _size_axis(ax, report)
  ax.set_xlabel('sqrt(box area), network input pixels')
  ax.set_ylabel('share of boxes')
  ax.legend(loc='lower right')


def write_plots(report: dict, out_dir: str) -> List[str]:
  """Writes PLOT_FILES into `out_dir` (existing); returns their paths."""
  paths = []
  extra = max(0, len(report['classes']) - MANY_CLASSES) * INCHES_PER_CLASS
  for name, draw in zip(PLOT_FILES, (_classes, _sizes, _aspects, _coverage)):
    size = (FIGSIZE[0] + extra, FIGSIZE[1] + 1.0) if draw is _classes and extra else FIGSIZE
    fig, ax = plt.subplots(figsize=size)
    try:
      draw(report, ax)
      ax.set_title(_title(report), fontsize=10)
      fig.tight_layout()
      path = os.path.join(out_dir, name)
      fig.savefig(path, dpi=DPI)
      paths.append(path)
    finally:
      plt.close(fig)
  return paths
