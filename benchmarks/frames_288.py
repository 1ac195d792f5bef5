"""Does a non-multiple-of-32 input train as well as a multiple? (docs/frames.md)

Trains the shapes experiment twice through `tools/train.py`, identical but for the
input size: 256x256 (no padding) and 288x288 (padded to 320 inside the backbone, so
anchors, targets and post-processing must agree on one frame), then compares the
val AP50 of the final evaluation (Model Garden's best-checkpoint info.json).

    python benchmarks/frames_288.py [--steps 500] [--work_dir /tmp/frames_288]

Before the frame rule, 288 trained its box targets against anchors normalized to the
padded frame and decoded them the same way, so its detections came out scaled by
320/288 and its AP50 fell far behind 256. Pass: |AP50(288) - AP50(256)| <= 0.05.
Prints `lscpu` model name with the figures; timings are not the point here.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZES = (256, 288)
MAX_AP50_GAP = 0.05


def _cpu_model() -> str:
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'
  lines = [l.split(':', 1)[1].strip() for l in out.splitlines() if l.startswith('Model name')]
  avx512 = 'avx512f' in out
  return f'{lines[0] if lines else "unknown"} ({"AVX-512" if avx512 else "no AVX-512"})'


def _train(data_dir: str, model_dir: str, size: int, steps: int) -> dict:
  overrides = ','.join([
      f'task.train_data.annotation_file={data_dir}/annotations/instances_train.json',
      f'task.train_data.image_dir={data_dir}/train',
      f'task.validation_data.annotation_file={data_dir}/annotations/instances_val.json',
      f'task.validation_data.image_dir={data_dir}/val',
      f'task.model.input_size=[{size},{size},3]',
      f'trainer.train_steps={steps}', f'trainer.validation_interval={steps}',
      f'trainer.checkpoint_interval={steps}',
      f'trainer.optimizer_config.learning_rate.cosine.decay_steps={steps}',
      'task.train_data.seed=1',
      'runtime.distribution_strategy=one_device', 'runtime.num_gpus=0',
  ])
  start = time.time()
  subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tools', 'train.py'), '--experiment',
       'ssdlite_mnv2_shapes', '--mode', 'train_and_eval', '--model_dir', model_dir,
       '--params_override', overrides],
      check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'),
      stdout=subprocess.DEVNULL)
  with open(os.path.join(model_dir, 'best_ckpt', 'info.json')) as f:
    info = json.load(f)
  info['wall_s'] = time.time() - start
  return info


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=500)
  parser.add_argument('--work_dir', default='/tmp/frames_288')
  args = parser.parse_args(argv)
  from mnv2_det.data import shapes  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(args.work_dir, 'data')
  if not os.path.exists(os.path.join(data_dir, 'annotations')):
    # The CI-sized variant of the built-in set (tests/test_e2e_shapes.py).
    shapes.generate(data_dir, num_train=256, num_val=64, seed=5,
                    size_class_probs=(0.0, 0.6, 0.4))
  results = {}
  for size in SIZES:
    model_dir = os.path.join(args.work_dir, f'model_{size}_{int(time.time())}')
    results[size] = _train(data_dir, model_dir, size, args.steps)
    print(f'{size}x{size}: AP50 {results[size]["AP50"]:.3f} AP {results[size]["AP"]:.3f} '
          f'({results[size]["wall_s"]:.0f} s)', flush=True)
  gap = results[288]['AP50'] - results[256]['AP50']
  print(f'CPU: {_cpu_model()}; {args.steps} steps; AP50 288 - 256 = {gap:+.3f} '
        f'({"pass" if abs(gap) <= MAX_AP50_GAP else "FAIL"}: bound {MAX_AP50_GAP})')
  return 0 if abs(gap) <= MAX_AP50_GAP else 1


if __name__ == '__main__':
  sys.exit(main())
