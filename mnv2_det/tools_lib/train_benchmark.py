"""Training throughput through the real `tools/train.py` path (benchmark only, no tests
time anything).

Both candidates are run as `python tools/train.py --mode train` subprocesses on the
SAME Model Garden TFRecords (written here from a COCO JSON with Model Garden's own
`create_coco_tf_record.create_tf_example`), each with its own real input pipeline,
train_lib + orbit loop, checkpointing off except at the end. Images/s is read from the
progress line `tools/train.py` prints after every train loop (`... | 15.2 img/s | ...`);
the first `skip_loops` loops (tracing, pipeline warm-up) are dropped.
"""

import json
import os
import re
import statistics
import subprocess
import sys
from typing import Dict, List

import tensorflow as tf
import yaml

from official.vision.data import create_coco_tf_record

IMAGES_PER_SECOND = re.compile(r'^step \d+/\d+ \|.*\| ([0-9.]+) img/s \|', re.MULTILINE)
TRAIN_TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'tools', 'train.py')


def write_tfrecord(annotation_file: str, image_dir: str, output_path: str,
                   max_images: int) -> int:
  """Writes the first `max_images` images of `annotation_file` as Model Garden
  tf.Examples.

  Returns:
    the number of examples written.
  """
  with open(annotation_file, encoding='utf-8') as f:
    coco = json.load(f)
  by_image: Dict[int, List[dict]] = {}
  for ann in coco['annotations']:
    by_image.setdefault(ann['image_id'], []).append(ann)
  names = {c['id']: c['name'] for c in coco['categories']}
  with tf.io.TFRecordWriter(output_path) as writer:
    for image in coco['images'][:max_images]:
      example, _ = create_coco_tf_record.create_tf_example(
          image, [image_dir], bbox_annotations=by_image.get(image['id'], []),
          id_to_name_map=names)
      writer.write(example.SerializeToString())
  return len(coco['images'][:max_images])


def trainer_overrides(steps: int, steps_per_loop: int) -> dict:
  """Train only: no validation, one checkpoint at the end, a loop per progress line."""
  return {'train_steps': steps, 'steps_per_loop': steps_per_loop,
          'summary_interval': steps_per_loop, 'checkpoint_interval': steps,
          'validation_interval': steps, 'best_checkpoint_export_subdir': '',
          'best_checkpoint_eval_metric': ''}


def run_train_tool(experiment: str, config: dict, workdir: str, name: str,
                   skip_loops: int) -> float:
  """Runs tools/train.py on `config` (a YAML-able override dict); median img/s.

  Raises:
    RuntimeError: the tool failed or printed too few progress lines.
  """
  config_file = os.path.join(workdir, f'{name}.yaml')
  with open(config_file, 'w', encoding='utf-8') as f:
    yaml.safe_dump(config, f)
  model_dir = os.path.join(workdir, f'{name}_model')
  result = subprocess.run(
      [sys.executable, TRAIN_TOOL, f'--experiment={experiment}', '--mode=train',
       f'--model_dir={model_dir}', f'--config_file={config_file}'],
      capture_output=True, text=True, check=False)
  rates = [float(x) for x in IMAGES_PER_SECOND.findall(result.stdout)]
  if result.returncode != 0 or len(rates) <= skip_loops:
    tail = '\n'.join((result.stderr or result.stdout).strip().splitlines()[-5:])
    raise RuntimeError(f'{experiment} via tools/train.py failed (exit '
                       f'{result.returncode}, {len(rates)} progress lines):\n{tail}')
  return statistics.median(rates[skip_loops:])


def interleaved_runs(candidates: Dict[str, tuple], workdir: str, rounds: int,
                     skip_loops: int) -> Dict[str, float]:
  """Best median img/s per candidate over `rounds` alternating runs.

  Args:
    candidates: name -> (experiment, config dict).
  """
  results: Dict[str, List[float]] = {name: [] for name in candidates}
  for index in range(rounds):
    for name, (experiment, config) in candidates.items():
      slug = re.sub(r'[^a-z0-9]+', '_', name.lower()) + f'_{index}'
      results[name].append(run_train_tool(experiment, config, workdir, slug, skip_loops))
  return {name: max(values) for name, values in results.items()}


def print_ratio_table(title: str, rates: Dict[str, float], reference: str,
                      target: float) -> None:
  print(f'\n{title}')
  for name, value in rates.items():
    print(f'  {name:44s} {value:8.2f} img/s')
  ours = [k for k in rates if k != reference][0]
  print(f'  -> {ours} / {reference} = {rates[ours] / rates[reference]:.2f}x '
        f'(target >= {target}x)')
