"""A dataset check without training: what the reader does to a COCO JSON + image folder,
the class, size and aspect-ratio statistics, and the anchor coverage (anchor_coverage.py)
of an experiment's model.

The reader part runs the training reader itself (`coco_reader.read_coco`, findings
recorded): a file it refuses raises its one-line ValueError here too, and so does the
training pipeline's own build (`input_pipeline.build_dataset_from_coco`: no usable
image, a bad resize or batch setting) and, when an experiment is named, the task's
category-table check (`num_classes`).
"""

import collections
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mnv2_det.analysis import anchor_coverage
from mnv2_det.data import coco_reader
from mnv2_det.data import image_check
from mnv2_det.data import input_pipeline
from mnv2_det.tasks import ssdlite as ssdlite_task

# Findings listed by name in the JSON report per kind (the counts are always exact).
MAX_LISTED_FINDINGS = 1000
# Aspect ratio (width / height) histogram edges: quarter octaves from 1/8 to 8; the
# first and last bins also take what lies beyond.
ASPECT_EDGES = tuple(float(2**(k / 4)) for k in range(-12, 13))
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Default alternatives: the input size times these (rounded to a multiple of 32) and
# the anchor min_scale times these.
ALT_SIZE_FACTORS = (1.0, 1.5, 2.0)
ALT_MIN_SCALE_FACTORS = (0.5, 0.75, 1.0, 1.5)
SIZE_MULTIPLE = 32
# With more classes than this, the summary prints the most frequent and the
# lowest-covered ones only (report.json has them all).
MAX_SUMMARY_CLASSES = 10


def default_alternatives(model_config) -> Tuple[list, list]:
  """(input sizes, min_scales) of the alternatives table for `model_config`."""
  h, w = (int(s) for s in model_config.input_size[:2])
  sizes = []
  for f in ALT_SIZE_FACTORS:
    hw = (h, w) if f == 1.0 else tuple(
        int(max(SIZE_MULTIPLE, round(s * f / SIZE_MULTIPLE) * SIZE_MULTIPLE))
        for s in (h, w))
    if hw not in sizes:
      sizes.append(hw)
  base = float(model_config.anchor.min_scale)
  return sizes, sorted({round(base * f, 4) for f in ALT_MIN_SCALE_FACTORS})


def _findings(stats: coco_reader.ReadStats) -> dict:
  by_kind = collections.defaultdict(list)
  for f in stats.findings:
    by_kind[f.kind].append(f)
  return {kind: {'count': len(by_kind[kind]),
                 'listed': [{'file_name': f.file_name, 'where': f.where,
                             'detail': f.detail}
                            for f in by_kind[kind][:MAX_LISTED_FINDINGS]]}
          for kind in coco_reader.FINDING_KINDS}


def _reader_section(coco, max_instances: int) -> dict:
  s = coco.stats
  crowded = [(os.path.relpath(r.file_path, coco.image_dir), int((~r.is_crowd).sum()))
             for r in coco.records if int((~r.is_crowd).sum()) > max_instances]
  return {
      'num_images': s.num_images, 'num_annotations': s.num_annotations,
      'num_boxes_kept': int(sum(r.num_instances for r in coco.records)),
      'num_crowd': s.num_crowd, 'num_negative_images': s.num_negative_images,
      'clipped_boxes': s.clipped_boxes, 'dropped_boxes': s.dropped_boxes,
      'filled_area': s.filled_area, 'filled_iscrowd': s.filled_iscrowd,
      'skipped_images': [{'file_name': n, 'reason': r} for n, r in s.skipped_images],
      'findings': _findings(s),
      # The parser's gt_boxes / groundtruths keep the first max_num_instances boxes of
      # such images (matching still sees all of them).
      'max_num_instances': int(max_instances),
      'images_over_max_instances': [{'file_name': p, 'boxes': n} for p, n in crowded],
  }


def _classes_section(coco) -> list:
  cmap = coco.category_map
  k = len(cmap.dataset_ids)
  boxes, crowd, images = (np.zeros(k + 1, np.int64) for _ in range(3))
  for r in coco.records:
    np.add.at(boxes, r.classes[~r.is_crowd], 1)
    np.add.at(crowd, r.classes[r.is_crowd], 1)
    images[np.unique(r.classes)] += 1
  return [{'index': i + 1, 'id': int(cid), 'name': name, 'boxes': int(boxes[i + 1]),
           'crowd': int(crowd[i + 1]), 'images': int(images[i + 1])}
          for i, (cid, name) in enumerate(zip(cmap.dataset_ids, cmap.names))]


def _bucket_counts(area: np.ndarray) -> Dict[str, int]:
  b = anchor_coverage.size_bucket(area)
  return {name: int((b == i).sum()) for i, name in enumerate(anchor_coverage.SIZE_BUCKETS)}


def _original_wh(coco) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Non-crowd boxes' width, height (original pixels) and `area` field, record order."""
  w, h, a = [], [], []
  for r in coco.records:
    keep = ~r.is_crowd
    w.append((r.boxes[keep, 3] - r.boxes[keep, 1]) * r.width)
    h.append((r.boxes[keep, 2] - r.boxes[keep, 0]) * r.height)
    a.append(r.area[keep])
  cat = lambda v: np.concatenate(v).astype(np.float64) if v else np.zeros([0])
  return cat(w), cat(h), cat(a)


def _aspect_section(ratio_input: np.ndarray, ratio_original: np.ndarray,
                    anchor_ratios: Sequence[float]) -> dict:
  edges = np.array(ASPECT_EDGES)

  def hist(r):
    return np.bincount(np.clip(np.digitize(r, edges) - 1, 0, len(edges) - 2),
                       minlength=len(edges) - 1).tolist() if r.size else [0] * (
                           len(edges) - 1)

  def quant(r):
    return {str(q): float(np.quantile(r, q)) for q in QUANTILES} if r.size else {}

  return {'definition': 'box width / height, in pixels',
          'edges': [float(e) for e in edges],
          'input': {'counts': hist(ratio_input), 'quantiles': quant(ratio_input)},
          'original': {'counts': hist(ratio_original), 'quantiles': quant(ratio_original)},
          'anchor_aspect_ratios': [float(a) for a in anchor_ratios]}


def class_labels(category_map) -> list:
  """Category names, made unique (` (id N)` appended to repeated names)."""
  names = list(category_map.names)
  return [f'{n} (id {i})' if names.count(n) > 1 else n
          for n, i in zip(names, category_map.dataset_ids)]


def check_training_acceptance(coco, params, check_num_classes: bool = True) -> None:
  """Raises the ValueError training would raise on this data with `params`: the
  task's num_classes check (if asked) and the training pipeline's build (not
  iterated: no usable image, resize / batch settings)."""
  if check_num_classes:
    task = ssdlite_task.SSDLiteTask(params.task)
    try:
      task.use_category_map(coco.category_map)
    except ValueError as e:
      raise ValueError(f'{coco.annotation_file}: {e}') from None
  train = params.task.train_data
  input_pipeline.build_dataset_from_coco(
      coco, is_training=True, batch_size=train.global_batch_size,
      output_size=params.task.model.input_size[:2], resize_mode=train.parser.resize_mode,
      max_num_instances=train.parser.max_num_instances, seed=0,
      shuffle_buffer_size=train.shuffle_buffer_size, dtype=train.dtype,
      drop_remainder=train.drop_remainder)


def check_dataset(annotation_file: str, image_dir: str, params,
                  check_images: str = image_check.DEFAULT_CHECK_LEVEL,
                  check_experiment: bool = True,
                  input_sizes: Optional[Sequence[Tuple[int, int]]] = None,
                  min_scales: Optional[Sequence[float]] = None):
  """The report dict (see README, tools/check_data.py) and the GtBoxes it was built on.

  Args:
    annotation_file, image_dir: the COCO JSON and its image folder.
    params: the experiment config: model geometry (input size, anchors), the train
      data's resize mode, matcher thresholds and max_num_instances.
    check_images: image check level (image_check.CHECK_LEVELS); training's default.
    check_experiment: also check num_classes against the category table.
    input_sizes, min_scales: the alternatives table; None: default_alternatives.

  Raises:
    ValueError: one line naming the file, for what training would refuse.
  """
  coco = coco_reader.read_coco(annotation_file, image_dir, check_images=check_images,
                               on_bad_image='skip', record_findings=True)
  check_training_acceptance(coco, params, check_num_classes=check_experiment)
  model = params.task.model
  parser = params.task.train_data.parser
  gt, coverage, _ = anchor_coverage.coverage(
      coco.records, model, parser.resize_mode, parser.match_threshold,
      parser.unmatched_threshold, class_labels(coco.category_map))
  default_sizes, default_scales = default_alternatives(model)
  alternatives = anchor_coverage.alternatives(
      coco.records, model, parser.resize_mode, parser.match_threshold,
      input_sizes or default_sizes, min_scales or default_scales,
      anchor_coverage.size_bucket(gt.area_px))
  width, height, area = _original_wh(coco)
  with np.errstate(divide='ignore', invalid='ignore'):
    ratio_input = gt.width_px / gt.height_px
    ratio_original = width / height
  side = np.sqrt(gt.area_px)
  edges = np.array(coverage['by_size_bin']['edges'])
  report = {
      'annotation_file': annotation_file, 'image_dir': image_dir,
      'check_images': check_images,
      'model': {'input_size': [int(s) for s in model.input_size[:2]],
                'resize_mode': parser.resize_mode, 'num_classes': int(model.num_classes),
                'num_classes_needed': coco.category_map.num_classes,
                'min_scale': float(model.anchor.min_scale),
                'max_scale': float(model.anchor.max_scale),
                'match_threshold': float(parser.match_threshold),
                'unmatched_threshold': float(parser.unmatched_threshold),
                'num_anchors': coverage['num_anchors'],
                'experiment_checked': bool(check_experiment)},
      'reader': _reader_section(coco, parser.max_num_instances),
      'classes': _classes_section(coco),
      'sizes': {
          'definition': 'COCO buckets: small < 32^2 <= medium < 96^2 <= large pixels^2',
          'input': _bucket_counts(gt.area_px),
          'original_area_field': _bucket_counts(area),
          'side_edges': [float(e) for e in edges],
          'side_counts': np.bincount(np.digitize(side, edges[1:-1]),
                                     minlength=len(edges) - 1).tolist()},
      'aspect_ratios': _aspect_section(ratio_input[np.isfinite(ratio_input)],
                                       ratio_original[np.isfinite(ratio_original)],
                                       model.anchor.aspect_ratios),
      'anchor_coverage': coverage,
      'alternatives': alternatives,
  }
  return report, gt


def _pct(v) -> str:
  return '-' if v is None else f'{100 * v:.1f}%'


def format_summary(report: dict) -> str:
  """The report as the text tools/check_data.py prints."""
  r, m, cov = report['reader'], report['model'], report['anchor_coverage']
  lines = [
      f'{report["annotation_file"]}: {r["num_images"]} images ({r["num_negative_images"]} '
      f'without boxes), {r["num_boxes_kept"]} boxes ({r["num_crowd"]} crowd), '
      f'{len(report["classes"])} categories (num_classes >= {m["num_classes_needed"]})',
      f'reader: clipped {r["clipped_boxes"]} box(es), dropped {r["dropped_boxes"]}, '
      f'filled area {r["filled_area"]}, filled iscrowd {r["filled_iscrowd"]}, skipped '
      f'{len(r["skipped_images"])} image(s) (check_images={report["check_images"]})']
  for kind, found in r['findings'].items():
    for f in found['listed'][:5]:
      lines.append(f'  {kind}: {f["file_name"]} {f["where"]}: {f["detail"]}')
    if found['count'] > 5:
      lines.append(f'  {kind}: ... {found["count"] - 5} more (report.json)')
  if r['images_over_max_instances']:
    lines.append(f'{len(r["images_over_max_instances"])} image(s) have more than '
                 f'max_num_instances={r["max_num_instances"]} boxes')
  classes = sorted(report['classes'], key=lambda c: -c['boxes'])
  more = len(classes) - MAX_SUMMARY_CLASSES
  lines.append('classes: ' + ', '.join(f'{c["name"]} {c["boxes"]}'
                                       for c in classes[:MAX_SUMMARY_CLASSES]) +
               (f', ... {more} more (report.json)' if more > 0 else ''))
  s = report['sizes']['input']
  lines.append(f'sizes in the {m["input_size"][0]}x{m["input_size"][1]} '
               f'{m["resize_mode"]} input: small {s["small"]}, medium {s["medium"]}, '
               f'large {s["large"]}')
  q = report['aspect_ratios']['input']['quantiles']
  if q:
    lines.append('aspect ratio w/h in the input (5/50/95%): ' + ' / '.join(
        f'{q[str(k)]:.2f}' for k in (0.05, 0.5, 0.95)))
  t = cov['total']
  lines.append(f'anchor coverage ({m["num_anchors"]} anchors, best IoU >= '
               f'{m["match_threshold"]}): covered {_pct(t["covered_share"])}, only by '
               f'force match {_pct(t["force_only_share"])}, missed {_pct(t["missed_share"])}')
  rows = list(cov['per_size'].items())
  per_class = list(cov['per_class'].items())
  if len(per_class) > MAX_SUMMARY_CLASSES:
    per_class = sorted([p for p in per_class if p[1]['boxes']],
                       key=lambda p: p[1]['covered_share'])[:MAX_SUMMARY_CLASSES]
    rows.append((f'the {len(per_class)} lowest-covered classes (report.json: all)', None))
  for name, c in rows + per_class:
    if c is None:
      lines.append(f'  {name}:')
      continue
    lines.append(f'  {name:>12s}: {c["boxes"]:6d} boxes, covered {_pct(c["covered_share"])}'
                 f', force only {_pct(c["force_only_share"])}, missed '
                 f'{_pct(c["missed_share"])}')
  lines.append('alternatives (best IoU >= threshold; buckets of the base input):')
  lines.append(f'  {"input":>9s} {"min_scale":>9s} {"anchors":>7s} {"all":>6s} '
               f'{"small":>6s} {"medium":>6s} {"large":>6s}')
  for a in report['alternatives']:
    p = a['per_size']
    lines.append(f'  {a["input_size"][0]:>4d}x{a["input_size"][1]:<4d} {a["min_scale"]:9.3f}'
                 f' {a["num_anchors"]:7d} {_pct(a["covered_share"]):>6s} '
                 f'{_pct(p["small"]):>6s} {_pct(p["medium"]):>6s} {_pct(p["large"]):>6s}')
  return '\n'.join(lines)
