"""Evaluation plots: PR curves, confusion matrix and F1 curve, as PNG + JSON files.

From one finished COCOeval (evaluation.coco.run_cocoeval) and its COCO results:

| file | what |
|---|---|
| `pr_curve_iou50.png/.json` | per-class precision vs recall at IoU 0.5 (`curves.pr_curves`) |
| `pr_curve_iou50_95.png/.json` | the same averaged over IoU 0.50:0.05:0.95 |
| `confusion_matrix.png/.json` | IoU 0.5, one score threshold, background row and column (`confusion`) |
| `f1_curve.png/.json` | F1 vs score threshold, the best one marked (`curves.f1_curve`) |

The JSON files hold the plotted numbers unrounded (the PR curves are pycocotools'
`eval['precision']` slices). Everything is rendered in memory first (matplotlib's Agg
canvas, no pyplot) and only then written, each file through a temporary name and a rename, so a
failure leaves no partial file. Used by tools/eval.py --plots and, after every
training-time evaluation, by evaluation/train_plots.py (which also sends the PNGs to
TensorBoard).
"""

import dataclasses
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from pycocotools.cocoeval import COCOeval

from mnv2_det.evaluation import confusion
from mnv2_det.evaluation import curves
from mnv2_det.export import atomic

PR_IOU50, PR_IOU50_95 = 'pr_curve_iou50', 'pr_curve_iou50_95'
CONFUSION, F1 = 'confusion_matrix', 'f1_curve'
PLOT_NAMES = (PR_IOU50, PR_IOU50_95, CONFUSION, F1)
CONFUSION_IOU = 0.5
# Confusion-matrix score threshold when none is given and no class has ground truth
# (otherwise the best-F1 threshold is used).
FALLBACK_SCORE_THRESHOLD = 0.5
MAX_LEGEND_CLASSES = 20  # more classes: no per-class legend
MAX_ANNOTATED_CELLS = 31  # confusion matrices up to this size print their counts
DPI = 100


@dataclasses.dataclass
class Plots:
  """Rendered plots: `data[name]` JSON-able dicts, `pngs[name]` PNG bytes (PLOT_NAMES)."""
  data: Dict[str, Dict[str, Any]]
  pngs: Dict[str, bytes]
  confusion_score_threshold: float


def _figure(width: float, height: float, layout: Optional[str] = None):
  """A (figure, axes) pair on its own Agg canvas (no pyplot state, no GUI backend);
  `layout` 'constrained' for long tick labels (it draws twice), else default margins."""
  figure = Figure(figsize=(width, height), layout=layout)
  FigureCanvasAgg(figure)
  return figure, figure.subplots()


def _png(figure) -> bytes:
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=DPI)
  return buffer.getvalue()


def _pr_figure(pr: Dict[str, Any], key: str, title: str) -> bytes:
  figure, axes = _figure(7, 6)
  recall = pr['recall']
  ap_key = 'AP50' if key == 'precision_iou50' else 'AP'
  legend = len(pr['classes']) <= MAX_LEGEND_CLASSES
  for c in pr['classes']:
    axes.plot(recall, c[key], linewidth=1,
              label=f'{c["name"]} {c[ap_key]:.3f}' if legend else None)
  if pr['classes']:
    mean = pr['mean_iou50' if key == 'precision_iou50' else 'mean_iou50_95']
    axes.plot(recall, mean, color='black', linewidth=3,
              label=f'all classes {float(np.mean(mean)):.3f} {ap_key}')
    axes.legend(loc='best', fontsize='small')
  else:
    axes.text(0.5, 0.5, 'no ground truth', ha='center', va='center')
  axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel='recall', ylabel='precision', title=title)
  axes.grid(alpha=0.3)
  return _png(figure)


def _confusion_figure(matrix_data: Dict[str, Any]) -> bytes:
  matrix = np.asarray(matrix_data['matrix'], np.float64)
  labels = matrix_data['labels']
  size = min(max(6.0, 0.4 * len(labels) + 3.0), 24.0)
  figure, axes = _figure(size, size * 0.9, 'constrained')
  totals = matrix.sum(axis=1, keepdims=True)
  shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
  image = axes.imshow(shares, cmap='Blues', vmin=0.0, vmax=1.0)
  figure.colorbar(image, ax=axes, shrink=0.8, label='share of the row')
  if len(labels) <= MAX_ANNOTATED_CELLS:
    for (i, j), count in np.ndenumerate(matrix):
      if count:
        axes.text(j, i, f'{int(count)}', ha='center', va='center', fontsize='small',
                  color='white' if shares[i, j] > 0.5 else 'black')
  ticks = np.arange(len(labels))
  axes.set_xticks(ticks, labels, rotation=90)
  axes.set_yticks(ticks, labels)
  axes.set(xlabel='prediction', ylabel='ground truth',
           title=f'confusion matrix (IoU {matrix_data["iou_threshold"]:g}, score >= '
           f'{matrix_data["score_threshold"]:.3f}; counts)')
  return _png(figure)


def _f1_figure(f1: Dict[str, Any]) -> bytes:
  figure, axes = _figure(7, 6)
  thresholds = f1['thresholds']
  legend = len(f1['classes']) <= MAX_LEGEND_CLASSES
  for c in f1['classes']:
    axes.plot(thresholds, c['f1'], linewidth=1, label=c['name'] if legend else None)
  if f1['best_score_threshold'] is not None:
    axes.plot(thresholds, f1['mean_f1'], color='black', linewidth=3,
              label=f'all classes {f1["best_f1"]:.3f} at {f1["best_score_threshold"]:.3f}')
    axes.axvline(f1['best_score_threshold'], color='black', linestyle='--', linewidth=1)
    axes.legend(loc='best', fontsize='small')
  else:
    axes.text(0.5, 0.5, 'no ground truth', ha='center', va='center')
  axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel='score threshold (keep score >= t)',
           ylabel='F1', title=f'F1 vs score threshold (IoU {f1["iou_threshold"]:g})')
  axes.grid(alpha=0.3)
  return _png(figure)


def make_plots(evaluator: COCOeval, results: Sequence[Dict[str, Any]],
               score_threshold: Optional[float] = None) -> Plots:
  """Renders every plot of one evaluation in memory.

  Args:
    evaluator: a finished COCOeval (`coco.run_cocoeval`).
    results: the COCO result dicts it scored.
    score_threshold: the confusion matrix's; None: the best-F1 threshold
      (FALLBACK_SCORE_THRESHOLD without ground truth).
  """
  pr = curves.pr_curves(evaluator)
  f1 = curves.f1_curve(evaluator)
  if score_threshold is None:
    score_threshold = f1['best_score_threshold']
    if score_threshold is None:
      score_threshold = FALLBACK_SCORE_THRESHOLD
  check_score_threshold(score_threshold)
  matrix = confusion.confusion_matrix(evaluator.cocoGt, results, evaluator.params.imgIds,
                                      float(score_threshold), CONFUSION_IOU)
  iou50 = {k: v for k, v in pr.items() if k != 'mean_iou50_95'}
  iou50['classes'] = [{k: v for k, v in c.items() if k not in ('precision_iou50_95', 'AP')}
                      for c in pr['classes']]
  iou50_95 = {k: v for k, v in pr.items() if k != 'mean_iou50'}
  iou50_95['classes'] = [{k: v for k, v in c.items() if k not in ('precision_iou50', 'AP50')}
                         for c in pr['classes']]
  data = {PR_IOU50: iou50, PR_IOU50_95: iou50_95, CONFUSION: matrix, F1: f1}
  pngs = {PR_IOU50: _pr_figure(pr, 'precision_iou50', 'precision-recall, IoU 0.5'),
          PR_IOU50_95: _pr_figure(pr, 'precision_iou50_95',
                                  'precision-recall, mean over IoU 0.5:0.95'),
          CONFUSION: _confusion_figure(matrix), F1: _f1_figure(f1)}
  return Plots(data=data, pngs=pngs, confusion_score_threshold=float(score_threshold))


def check_score_threshold(value: float,
                          what: str = 'the confusion-matrix score threshold') -> None:
  """ValueError naming `what` unless 0 <= value <= 1."""
  if not 0.0 <= float(value) <= 1.0:
    raise ValueError(f'{what} must be in [0, 1], got {value}')


def check_plots_dir(out_dir: str) -> None:
  """ValueError if `out_dir` is empty or exists as something other than a folder."""
  if not out_dir:
    raise ValueError('a plots folder is required')
  if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f'plots folder {out_dir} exists and is not a folder')


def write_plots(plots: Plots, out_dir: str) -> List[str]:
  """Writes `NAME.png` and `NAME.json` for PLOT_NAMES into `out_dir` (made if missing,
  existing files replaced); returns the paths written."""
  check_plots_dir(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name in PLOT_NAMES:
    for suffix, content, mode in (('.json', json.dumps(plots.data[name], indent=1), 'w'),
                                  ('.png', plots.pngs[name], 'wb')):
      path = os.path.join(out_dir, name + suffix)
      with atomic.atomic_output(path, is_dir=False, overwrite=True) as temp:
        with open(temp, mode, **({'encoding': 'utf-8'} if mode == 'w' else {})) as f:
          f.write(content)
      written.append(path)
  return written


def plot_summary(plots: Plots, out_dir: str, files: List[str]) -> Dict[str, Any]:
  """What the eval report says of the plots."""
  return {'plots_dir': out_dir, 'files': files,
          'confusion_score_threshold': plots.confusion_score_threshold,
          'confusion_iou_threshold': CONFUSION_IOU,
          'confusion_crowd_ignored': plots.data[CONFUSION]['crowd_ignored']}


def analyze_fn(out_dir: str, score_threshold: Optional[float] = None):
  """An `evaluation.coco.evaluate_images(analyze=...)` that writes the plots to `out_dir`."""
  def analyze(evaluator: COCOeval, results) -> Dict[str, Any]:
    plots = make_plots(evaluator, results, score_threshold)
    return plot_summary(plots, out_dir, write_plots(plots, out_dir))
  return analyze
