"""Same data, same CPU-minutes: COCO AP of three from-scratch detectors on the shapes set.

  python benchmarks/accuracy/run.py --data_dir data/shapes --minutes 20 \
      [--torch_python .venv-torch/bin/python] [--workdir DIR]
  python benchmarks/accuracy/run.py --throughput --data_dir data/shapes

Detectors (each trained from random init, one training process at a time):
  - ours: `tools/train.py --experiment ssdlite_mnv2_shapes --mode train_and_eval`
    (COCO JSON + image folder, our COCO eval on the val JSON);
  - Model Garden RetinaNet-MobileNetV2: `tools/train.py --experiment
    retinanet_mobile_coco` (benchmarks/detectors.py) on TFRecords written from the same
    JSON with Model Garden's create_coco_tf_record, Model Garden's COCO evaluator with
    the val JSON;
  - torchvision SSDLite320-MobileNetV3-Large (torchvision_ssdlite.py, in the torch venv).

Each detector first runs a pilot (`--pilot_steps` training steps, same command) that
measures its training images/s and its start-up overhead (process start to first step
at that rate: imports, graph tracing, pipeline warm-up). The real run then gets
steps = (minutes x 60 - overhead) x img/s / batch, the LR schedule spanning those
steps, so that process start -> end of the last training step takes about --minutes.
The table reports that measured wall time.

Peak RSS, per training process: `ru_maxrss` from os.wait4 on that child (its largest
process, here the trainer itself, over its whole life including the final eval), and
the peak of the summed RSS of the process tree polled every 0.5 s up to the last
training step (counts torchvision's DataLoader workers; shared pages count once per
process).

--throughput (issue #14, item 5): training images/s at 320x320, batch 8, 91 classes, each
with its real input pipeline (ours and MG via tools/train.py on the same TFRecords, as
`benchmarks/benchmark.py train_cli`; torchvision with a DataLoader from the JPEGs),
median of the progress windows after --skip_loops, with each process's peak RSS.
"""

import argparse
import datetime
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCHMARKS)
sys.path.insert(0, BENCHMARKS)
sys.path.insert(0, ROOT)

import yaml  # pylint: disable=g-import-not-at-top,wrong-import-position

import procfs  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_venv  # pylint: disable=g-import-not-at-top,wrong-import-position

TORCH_SCRIPT = os.path.join(HERE, 'torchvision_ssdlite.py')
TRAIN_TOOL = os.path.join(ROOT, 'tools', 'train.py')
# The progress line of tools/train.py (and of torchvision_ssdlite.py, which copies it).
PROGRESS = re.compile(r'^step (\d+)/(\d+) \|.*\| ([0-9.]+) img/s \|')
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'ARmax1', 'ARmax10', 'ARmax100', 'ARs', 'ARm', 'ARl')
STAT_BLOCK = 'COCO metrics of the final evaluation:'
OURS, MG, TV = 'ours SSDLite-MNv2', 'MG RetinaNet-MNv2', 'torchvision SSDLite-MNv3'
MG_REFERENCE_BATCH = 256  # retinanet_mobile_coco's global batch, for linear LR scaling


def cpu_header():
  """lscpu model name and whether avx512f is among the CPU flags."""
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=False).stdout
  except OSError:
    out = ''
  model = next((l.split(':', 1)[1].strip() for l in out.splitlines()
                if l.startswith('Model name')), 'unknown')
  flags = next((l.split(':', 1)[1].split() for l in out.splitlines()
                if l.startswith('Flags')), [])
  return (f'CPU: {model} | avx512f: {"yes" if "avx512f" in flags else "no"} | '
          f'{os.cpu_count()} logical CPUs | {datetime.datetime.now():%Y-%m-%d %H:%M}')


def _tree_rss_bytes(root_pid):
  """Summed VmRSS of `root_pid` and its descendants, from /proc (Linux)."""
  children = {}
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat', encoding='utf-8') as f:
        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
      continue
    children.setdefault(ppid, []).append(int(entry))
  total, todo = 0, [root_pid]
  while todo:
    pid = todo.pop()
    todo += children.get(pid, [])
    try:
      total += procfs.vm_rss_bytes(pid)
    except OSError:
      pass
  return total


class Child:
  """Runs one command; stdout lines timestamped live, peak RSS by wait4 and polling."""

  def __init__(self, cmd, log_prefix, echo=True):
    self.cmd = cmd
    self.log_prefix = log_prefix
    self.echo = echo
    self.lines = []  # (seconds since start, line)
    self.last_progress = None  # seconds since start of the last progress line
    self.peak_tree_rss = 0  # bytes, up to the last progress line
    self._done = threading.Event()
    self._training_over = False

  def _poll(self, pid):
    while not self._done.wait(0.5):
      total = _tree_rss_bytes(pid)
      if not self._training_over:
        self.peak_tree_rss = max(self.peak_tree_rss, total)

  def run(self, total_steps=None):
    """Returns the exit code; `total_steps` marks the end of training in the output."""
    self._training_over = False
    with open(self.log_prefix + '.stderr', 'w', encoding='utf-8') as err, \
        open(self.log_prefix + '.stdout', 'w', encoding='utf-8') as log:
      log.write(' '.join(self.cmd) + '\n')
      start = time.perf_counter()
      proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                              bufsize=1, cwd=ROOT)
      poller = threading.Thread(target=self._poll, args=(proc.pid,), daemon=True)
      poller.start()
      for line in proc.stdout:
        now = time.perf_counter() - start
        line = line.rstrip('\n')
        self.lines.append((now, line))
        log.write(f'[{now:8.1f}s] {line}\n')
        log.flush()
        match = PROGRESS.match(line)
        if match:
          self.last_progress = now
          if total_steps is not None and int(match.group(1)) >= total_steps:
            self._training_over = True
        if self.echo and (match or line.startswith('error')):
          print(f'    {line}', flush=True)
      _, status, usage = os.wait4(proc.pid, 0)
      proc.returncode = os.waitstatus_to_exitcode(status)
      self.wall = time.perf_counter() - start
      self._done.set()
      poller.join()
    self.ru_maxrss_mb = usage.ru_maxrss / 1024  # KiB on Linux
    self.returncode = proc.returncode
    return proc.returncode

  def rates(self):
    return [float(PROGRESS.match(l).group(3)) for _, l in self.lines if PROGRESS.match(l)]

  def stats_block(self):
    """The 12 stats from the `COCO metrics of the final evaluation:` block."""
    text = [l for _, l in self.lines]
    if STAT_BLOCK not in text:
      return None
    out = {}
    for line in text[text.index(STAT_BLOCK) + 1:]:
      parts = line.split()
      if len(parts) < 2 or parts[0] not in STAT_NAMES:
        break
      try:
        out[parts[0]] = float(parts[1])
      except ValueError:
        out[parts[0]] = -1.0  # "-1 (no ground truth)" style
    return out

  def fail(self, what):
    tail = []
    for name in ('.stderr', '.stdout'):
      with open(self.log_prefix + name, encoding='utf-8') as f:
        tail += f.read().strip().splitlines()[-6:]
    raise RuntimeError(f'{what} failed (exit {self.returncode}); logs '
                       f'{self.log_prefix}.std{{out,err}}:\n' + '\n'.join(tail))


def _deep_update(base, extra):
  for key, value in (extra or {}).items():
    if isinstance(value, dict) and isinstance(base.get(key), dict):
      _deep_update(base[key], value)
    else:
      base[key] = value
  return base


def _subset_json(src, dst, max_images):
  """`src` restricted to its first `max_images` images (0: all); returns (path, count)."""
  with open(src, encoding='utf-8') as f:
    coco = json.load(f)
  if max_images and max_images < len(coco['images']):
    coco['images'] = coco['images'][:max_images]
    keep = {image['id'] for image in coco['images']}
    coco['annotations'] = [a for a in coco['annotations'] if a['image_id'] in keep]
    with open(dst, 'w', encoding='utf-8') as f:
      json.dump(coco, f)
    return dst, len(coco['images'])
  return src, len(coco['images'])


def prepare_data(args, workdir, need_val=True):
  """Train/val JSON (subsets if asked) and their Model Garden TFRecords."""
  import train_speed  # pylint: disable=g-import-not-at-top  (TensorFlow: only here)
  data = {'train_dir': os.path.join(args.data_dir, 'train'),
          'val_dir': os.path.join(args.data_dir, 'val')}
  ann = os.path.join(args.data_dir, 'annotations')
  data['train_json'], data['num_train'] = _subset_json(
      os.path.join(ann, 'instances_train.json'),
      os.path.join(workdir, 'instances_train.json'), args.max_train_images)
  data['val_json'], data['num_val'] = _subset_json(
      os.path.join(ann, 'instances_val.json'),
      os.path.join(workdir, 'instances_val.json'), args.max_val_images)
  with open(data['train_json'], encoding='utf-8') as f:
    data['category_ids'] = sorted(c['id'] for c in json.load(f)['categories'])
  splits = [('train', data['train_json'], data['train_dir'], data['num_train'])]
  if need_val:
    splits.append(('val', data['val_json'], data['val_dir'], data['num_val']))
  for split, annotation, images, count in splits:
    path = os.path.join(workdir, f'{split}.tfrecord')
    start = time.perf_counter()
    written = train_speed.write_tfrecord(annotation, images, path, count)
    print(f'  wrote {written} {split} examples to {path} '
          f'({time.perf_counter() - start:.0f} s)', flush=True)
    data[f'{split}_records'] = path
  return data


# ---------------------------------------------------------------------------- configs

def _loop(steps, steps_per_loop):
  return max(1, min(steps_per_loop, steps))


def ours_config(args, data, steps, evaluate):
  loop = _loop(steps, args.steps_per_loop)
  warmup = min(100, steps // 10)  # the experiment's 100, at most a tenth of the run
  config = {
      'task': {
          'model': {'input_size': [args.size, args.size, 3]},
          'train_data': {'annotation_file': data['train_json'],
                         'image_dir': data['train_dir'],
                         'global_batch_size': args.batch_size,
                         'shuffle_buffer_size': data['num_train']},
          'validation_data': {'annotation_file': data['val_json'],
                              'image_dir': data['val_dir']},
          'allow_image_summary': False},
      'trainer': {
          'train_steps': steps, 'steps_per_loop': loop, 'summary_interval': loop,
          'checkpoint_interval': steps, 'validation_interval': steps,
          'eval_plots': {'enabled': False},
          'optimizer_config': {
              'learning_rate': {'cosine': {'decay_steps': steps}},
              'warmup': {'linear': {'warmup_steps': warmup}}}}}
  if args.ours_depth_multiplier:
    config['task']['model']['backbone'] = {
        'mnv2_det': {'depth_multiplier': args.ours_depth_multiplier}}
  if not evaluate:
    config['trainer'].update(best_checkpoint_export_subdir='',
                             best_checkpoint_eval_metric='')
  return _deep_update(config, json.loads(args.ours_override or '{}'))


def mg_config(args, data, steps, evaluate):
  import detectors  # pylint: disable=g-import-not-at-top  (TensorFlow: only here)
  # Model Garden uses the dataset category ids as class indices: ids 0..max.
  config = detectors.retinanet_mnv2_config(max(data['category_ids']) + 1,
                                           args.size).as_dict()
  task, trainer = config['task'], config['trainer']
  loop = _loop(steps, args.steps_per_loop)
  task['init_checkpoint'] = ''
  task['annotation_file'] = data['val_json']
  task['train_data'].update(input_path=data['train_records'],
                            global_batch_size=args.batch_size, dtype='float32',
                            shuffle_buffer_size=data['num_train'])
  task['validation_data'].update(input_path=data.get('val_records', ''),
                                 global_batch_size=args.eval_batch_size, dtype='float32',
                                 drop_remainder=False)
  if args.size % 2**task['model']['max_level']:  # no padding to 2^max_level, as train_cli
    task['train_data']['parser']['pad'] = False
    task['validation_data']['parser']['pad'] = False
  # Its own recipe (SGD 0.9, step decay at 95.8% / 98.3% of the run, linear warm-up),
  # LR scaled linearly from global batch 256, the schedule squeezed onto `steps`.
  lr = trainer['optimizer_config']['learning_rate']['stepwise']
  total = trainer['train_steps']
  scale = args.batch_size / MG_REFERENCE_BATCH
  lr['boundaries'] = [max(1, round(b / total * steps)) for b in lr['boundaries']]
  lr['values'] = [v * scale for v in lr['values']]
  warm = trainer['optimizer_config']['warmup']['linear']
  warm['warmup_steps'] = min(warm['warmup_steps'], steps // 10)
  warm['warmup_learning_rate'] *= scale
  trainer.update(train_steps=steps, steps_per_loop=loop, summary_interval=loop,
                 checkpoint_interval=steps, validation_interval=steps,
                 validation_steps=math.ceil(data['num_val'] / args.eval_batch_size),
                 best_checkpoint_export_subdir='best_ckpt' if evaluate else '',
                 best_checkpoint_eval_metric='AP' if evaluate else '',
                 max_to_keep=1)
  return _deep_update(config, json.loads(args.mg_override or '{}'))


def tf_command(experiment, config, workdir, name, mode):
  config_file = os.path.join(workdir, f'{name}.yaml')
  with open(config_file, 'w', encoding='utf-8') as f:
    yaml.safe_dump(config, f)
  model_dir = os.path.join(workdir, f'{name}_model')
  shutil.rmtree(model_dir, ignore_errors=True)  # else tools/train.py resumes from it
  return [sys.executable, TRAIN_TOOL, f'--experiment={experiment}', f'--mode={mode}',
          f'--model_dir={model_dir}', f'--config_file={config_file}'], model_dir


def torch_command(args, data, steps, output, size, batch, num_classes=0, evaluate=True,
                  log_every=None):
  cmd = [args.torch_python, TORCH_SCRIPT, '--train_json', data['train_json'],
         '--train_dir', data['train_dir'], '--size', str(size), '--batch_size', str(batch),
         '--steps', str(steps), '--log_every', str(log_every or _loop(steps, args.steps_per_loop)),
         '--workers', str(args.torch_workers), '--threads', str(args.torch_threads),
         '--num_classes', str(num_classes), '--output', output,
         '--eval_batch_size', str(args.eval_batch_size)]
  if evaluate:
    cmd += ['--val_json', data['val_json'], '--val_dir', data['val_dir']]
  return cmd


def build_command(name, args, data, workdir, steps, tag, evaluate):
  """(command, model_dir or torch JSON output) of one detector's run."""
  mode = 'train_and_eval' if evaluate else 'train'
  slug = re.sub(r'[^a-z0-9]+', '_', name.lower()) + f'_{tag}'
  if name == OURS:
    return tf_command('ssdlite_mnv2_shapes', ours_config(args, data, steps, evaluate),
                      workdir, slug, mode)
  if name == MG:
    return tf_command('retinanet_mobile_coco', mg_config(args, data, steps, evaluate),
                      workdir, slug, mode)
  output = os.path.join(workdir, f'{slug}.json')
  return torch_command(args, data, steps, output, args.size, args.batch_size,
                       evaluate=evaluate), output


# ---------------------------------------------------------------------------- accuracy

def pilot(name, args, data, workdir):
  """(img/s, start-up overhead s) from a short training run of the same command."""
  steps = args.pilot_steps
  saved = args.steps_per_loop
  args.steps_per_loop = args.pilot_loop
  try:
    cmd, _ = build_command(name, args, data, workdir, steps, 'pilot', evaluate=False)
  finally:
    args.steps_per_loop = saved
  child = Child(cmd, os.path.join(workdir, re.sub(r'\W+', '_', name) + '_pilot'),
                echo=args.verbose)
  if child.run() != 0 or len(child.rates()) <= args.pilot_skip_loops:
    child.fail(f'{name} pilot')
  rate = statistics.median(child.rates()[args.pilot_skip_loops:])
  overhead = max(0.0, child.last_progress - steps * args.batch_size / rate)
  return rate, overhead, child.wall


def read_stats(name, target, child):
  """The 12 COCO stats of the final eval: the JSON files the runs write, else stdout."""
  if name == TV:
    with open(target, encoding='utf-8') as f:
      return json.load(f)['stats'], 'torchvision_ssdlite.py --output'
  info = os.path.join(target, 'best_ckpt', 'info.json')  # Model Garden's best-ckpt export
  if os.path.exists(info):  # one eval per run (validation_interval = train_steps)
    with open(info, encoding='utf-8') as f:
      logs = json.load(f)
    stats = {k: float(logs[k]) for k in STAT_NAMES if k in logs}
    if len(stats) == len(STAT_NAMES):
      return stats, info
  stats = child.stats_block()
  if stats:
    return stats, 'stdout'
  child.fail(f'{name}: no COCO stats')
  return None


def accuracy(args, workdir):
  print('preparing data', flush=True)
  data = prepare_data(args, workdir)
  names = [n for n in (OURS, MG, TV) if n in args.detectors]
  rows = {}
  for name in names:
    print(f'\n== {name}', flush=True)
    if args.fixed_steps:
      rate, overhead, pilot_wall = None, None, None
      steps = args.fixed_steps
    else:
      rate, overhead, pilot_wall = pilot(name, args, data, workdir)
      budget = args.minutes * 60 - overhead
      steps = max(args.min_steps, round(budget * rate / args.batch_size))
      print(f'  pilot: {rate:.2f} img/s, start-up {overhead:.0f} s (pilot wall '
            f'{pilot_wall:.0f} s) -> {steps} steps for {args.minutes} min', flush=True)
    cmd, target = build_command(name, args, data, workdir, steps, 'run', evaluate=True)
    child = Child(cmd, os.path.join(workdir, re.sub(r'\W+', '_', name) + '_run'),
                  echo=args.verbose)
    if child.run(total_steps=steps) != 0:
      child.fail(name)
    stats, source = read_stats(name, target, child)
    rates = child.rates()
    skip = min(args.skip_loops, max(len(rates) - 1, 0))
    rows[name] = {
        'stats': stats, 'stats_source': source, 'steps': steps,
        'batch_size': args.batch_size, 'size': args.size,
        'img_per_s': statistics.median(rates[skip:]) if rates else None,
        'train_wall_min': child.last_progress / 60,
        'process_wall_min': child.wall / 60,
        'peak_rss_mb': child.ru_maxrss_mb,
        'peak_tree_rss_mb_train': child.peak_tree_rss / 2**20,
        'pilot_img_per_s': rate, 'pilot_overhead_s': overhead,
        'command': ' '.join(cmd)}
    print(f'  {steps} steps, train wall {child.last_progress / 60:.2f} min, '
          f'AP {stats["AP"]:.3f}, AP50 {stats["AP50"]:.3f} ({source})', flush=True)
  return data, rows


def accuracy_table(data, rows, args):
  lines = [f'same data ({data["num_train"]} train / {data["num_val"]} val images, '
           f'{args.data_dir}), {args.size}x{args.size}, batch {args.batch_size}, '
           + (f'{args.fixed_steps} steps each (--fixed_steps)' if args.fixed_steps else
              f'budget {args.minutes} min of training per detector')
           + ', from scratch',
           '',
           '| detector | AP | AP50 | APs | APm | APl | train img/s | steps | '
           'train wall min | peak RSS MB | peak tree RSS MB |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for name, r in rows.items():
    s = r['stats']
    lines.append(
        f'| {name} | {s["AP"]:.3f} | {s["AP50"]:.3f} | {s["APs"]:.3f} | {s["APm"]:.3f} | '
        f'{s["APl"]:.3f} | {r["img_per_s"]:.2f} | {r["steps"]} | {r["train_wall_min"]:.2f} | '
        f'{r["peak_rss_mb"]:.0f} | {r["peak_tree_rss_mb_train"]:.0f} |')
  return lines


# ---------------------------------------------------------------------------- throughput

def throughput(args, workdir):
  """img/s at 320, batch 8, 91 classes, each detector's real input pipeline."""
  import detectors  # pylint: disable=g-import-not-at-top
  import train_speed  # pylint: disable=g-import-not-at-top
  size, batch, classes = 320, args.throughput_batch_size, 91
  print('preparing data', flush=True)
  data = prepare_data(args, workdir, need_val=False)
  records = {'input_path': data['train_records'], 'global_batch_size': batch}
  trainer = train_speed.trainer_overrides(args.throughput_steps, args.throughput_loop)
  ours = {'task': {
      'model': {'num_classes': classes, 'input_size': [size, size, 3],
                'backbone': {'mnv2_det': {'depth_multiplier': 1.0}}},
      'train_data': dict(records, annotation_file='', image_dir=''),
      'validation_data': {'annotation_file': data['val_json'], 'image_dir': data['val_dir']},
      'allow_image_summary': False}, 'trainer': trainer}
  mg = detectors.retinanet_mnv2_config(classes, size).as_dict()
  mg['task']['train_data'].update(records)
  mg['task']['train_data']['parser']['pad'] = False  # 320, as train_cli
  mg['trainer'].update(trainer)
  rows = {}
  for name in [n for n in (OURS, MG, TV) if n in args.detectors]:
    print(f'\n== {name}', flush=True)
    slug = re.sub(r'\W+', '_', name) + '_throughput'
    if name == TV:
      cmd = torch_command(args, data, args.throughput_steps,
                          os.path.join(workdir, slug + '.json'), size, batch,
                          num_classes=classes, evaluate=False,
                          log_every=args.throughput_loop)
    else:
      experiment, config = (('ssdlite_mnv2_shapes', ours) if name == OURS
                            else ('retinanet_mobile_coco', mg))
      cmd, _ = tf_command(experiment, config, workdir, slug, 'train')
    child = Child(cmd, os.path.join(workdir, slug), echo=args.verbose)
    rates = child.rates() if child.run(total_steps=args.throughput_steps) == 0 else []
    if len(rates) <= args.throughput_skip_loops:
      child.fail(f'{name} throughput')
    rows[name] = {'img_per_s': statistics.median(rates[args.throughput_skip_loops:]),
                  'rates': rates, 'peak_rss_mb': child.ru_maxrss_mb,
                  'peak_tree_rss_mb_train': child.peak_tree_rss / 2**20,
                  'train_wall_min': child.last_progress / 60, 'command': ' '.join(cmd)}
    print(f'  {rows[name]["img_per_s"]:.2f} img/s', flush=True)
  return data, rows


def throughput_table(data, rows, args):
  ref = rows.get(MG)
  lines = [f'training images/s at 320x320, batch {args.throughput_batch_size}, 91 classes, '
           f'{data["num_train"]} images, median of progress windows '
           f'{args.throughput_skip_loops + 1}.. of '
           f'{args.throughput_steps // args.throughput_loop} '
           f'({args.throughput_loop} steps each)', '',
           '| detector | train img/s | vs MG | peak RSS MB | peak tree RSS MB | wall min |',
           '|---|---|---|---|---|---|']
  for name, r in rows.items():
    ratio = f'{r["img_per_s"] / ref["img_per_s"]:.2f}x' if ref else '-'
    lines.append(f'| {name} | {r["img_per_s"]:.2f} | {ratio} | {r["peak_rss_mb"]:.0f} | '
                 f'{r["peak_tree_rss_mb_train"]:.0f} | {r["train_wall_min"]:.2f} |')
  return lines


# ---------------------------------------------------------------------------- main

def _parser():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--data_dir', default='data/shapes',
                 help='from `python -m mnv2_det.data.shapes DIR`')
  p.add_argument('--workdir', default='', help='outputs (default: a new temp dir)')
  p.add_argument('--output', default='', help='JSON of the table (default WORKDIR/'
                 'accuracy.json or throughput.json)')
  p.add_argument('--torch_python', default=torch_venv.default_python(),
                 help=torch_venv.HELP)
  p.add_argument('--detectors', nargs='+', default=['ours', 'mg', 'torchvision'],
                 choices=['ours', 'mg', 'torchvision'])
  p.add_argument('--throughput', action='store_true',
                 help='training img/s at 320, batch 8, 91 classes instead of AP')
  p.add_argument('--minutes', type=float, default=20.0,
                 help='training wall budget per detector (process start to last step)')
  p.add_argument('--size', type=int, default=256)
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--eval_batch_size', type=int, default=16)
  p.add_argument('--max_train_images', type=int, default=0, help='0: all')
  p.add_argument('--max_val_images', type=int, default=0, help='0: all')
  p.add_argument('--steps_per_loop', type=int, default=50,
                 help='steps per progress line / orbit loop (ours and MG)')
  p.add_argument('--skip_loops', type=int, default=1,
                 help='progress lines dropped from the reported img/s')
  p.add_argument('--pilot_steps', type=int, default=40)
  p.add_argument('--pilot_loop', type=int, default=10, help='steps per pilot progress line')
  p.add_argument('--pilot_skip_loops', type=int, default=1)
  p.add_argument('--min_steps', type=int, default=10)
  p.add_argument('--fixed_steps', type=int, default=0,
                 help='skip the pilots and train every detector this many steps')
  p.add_argument('--ours_depth_multiplier', type=float, default=0.0,
                 help="0: the experiment's (0.5)")
  p.add_argument('--ours_override', default='', help='JSON merged into our config')
  p.add_argument('--mg_override', default='', help='JSON merged into the MG config')
  p.add_argument('--torch_workers', type=int, default=1)
  p.add_argument('--torch_threads', type=int, default=2)
  p.add_argument('--throughput_batch_size', type=int, default=8)
  p.add_argument('--throughput_steps', type=int, default=80)
  p.add_argument('--throughput_loop', type=int, default=10)
  p.add_argument('--throughput_skip_loops', type=int, default=2)
  p.add_argument('--verbose', action='store_true', help='echo every progress line')
  return p


def main(argv=None):
  args = _parser().parse_args(argv)
  args.detectors = [{'ours': OURS, 'mg': MG, 'torchvision': TV}[d] for d in args.detectors]
  args.data_dir = os.path.abspath(args.data_dir)
  workdir = os.path.abspath(args.workdir) if args.workdir else None
  if workdir is None:
    import tempfile  # pylint: disable=g-import-not-at-top
    workdir = tempfile.mkdtemp(prefix='mnv2_det_accuracy_')
  os.makedirs(workdir, exist_ok=True)
  header = cpu_header()
  print(header, f'\nworkdir {workdir}', flush=True)
  if TV in args.detectors and not os.path.exists(args.torch_python):
    sys.exit(f'error: --torch_python {args.torch_python} not found (see '
             'benchmarks/accuracy/README.md)')
  if args.throughput:
    data, rows = throughput(args, workdir)
    lines = throughput_table(data, rows, args)
  else:
    data, rows = accuracy(args, workdir)
    lines = accuracy_table(data, rows, args)
  table = '\n'.join([header, ''] + lines)
  print('\n' + table, flush=True)
  output = args.output or os.path.join(workdir, 'throughput.json' if args.throughput
                                       else 'accuracy.json')
  with open(output, 'w', encoding='utf-8') as f:
    json.dump({'cpu': header, 'args': vars(args), 'rows': rows, 'table': table}, f, indent=1)
  with open(os.path.splitext(output)[0] + '.md', 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  print(f'\nwrote {output}', flush=True)


if __name__ == '__main__':
  main()
