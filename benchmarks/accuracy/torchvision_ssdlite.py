"""torchvision SSDLite-MobileNetV3-Large, trained from scratch on a COCO JSON + image folder.

Runs ONLY in the torch venv (benchmarks/accuracy/requirements-torch.txt), as a subprocess
of benchmarks/accuracy/run.py; nothing else in the repository imports torch.

  .venv-torch/bin/python benchmarks/accuracy/torchvision_ssdlite.py \
      --train_json A/instances_train.json --train_dir A/train \
      --val_json A/instances_val.json --val_dir A/val --size 256 --batch_size 16 \
      --steps 1000 --output result.json

Model: `ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
num_classes=K+1)` (K dataset categories + background at index 0), its transform
replaced by the same GeneralizedRCNNTransform at `--size` (the builder fixes 320; the
anchors are relative, so only the transform knows the size).

Recipe: torchvision references/detection, "SSDlite320 MobileNetV3-Large" (SGD momentum
0.9, weight decay 4e-5 on every parameter, lr 0.15 at global batch 192 scaled linearly
to --batch_size, cosine annealing, linear warm-up from lr/1000 over
min(1000, iterations per epoch - 1) iterations) with random horizontal flip only; the
cosine is per iteration over --steps instead of per epoch over 660 epochs.

Prints a progress line per --log_every steps in the format of tools/train.py
(`step S/T | loss L | lr X | R img/s | ETA ...`), so the driver parses both alike, and
writes --output: the 12 pycocotools stats (dataset category ids, original-image xywh
boxes) and the run's numbers.
"""

import time

START = time.time()

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import json
import math
import os
import random
import statistics
import sys

import numpy as np
from PIL import Image
import torch
import torchvision
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.transforms import functional as F

STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'ARmax1', 'ARmax10', 'ARmax100', 'ARs', 'ARm', 'ARl')
REFERENCE_LR, REFERENCE_BATCH = 0.15, 192  # 8 GPUs x 24
WEIGHT_DECAY, MOMENTUM = 4e-5, 0.9
WARMUP_FACTOR, MAX_WARMUP_ITERS = 1.0 / 1000, 1000


class CocoDetection(torch.utils.data.Dataset):
  """COCO JSON images with xyxy boxes and contiguous labels 1..K (sorted category ids)."""

  def __init__(self, annotation_file, image_dir, category_ids, train, max_images=0):
    with open(annotation_file, encoding='utf-8') as f:
      coco = json.load(f)
    self.images = coco['images'][:max_images] if max_images else coco['images']
    self.image_dir = image_dir
    self.train = train
    self.label_of = {cat: i + 1 for i, cat in enumerate(category_ids)}
    self.by_image = {}
    for ann in coco['annotations']:
      if ann.get('iscrowd', 0):
        continue
      self.by_image.setdefault(ann['image_id'], []).append(ann)

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    info = self.images[index]
    image = Image.open(os.path.join(self.image_dir, info['file_name'])).convert('RGB')
    image = F.convert_image_dtype(F.pil_to_tensor(image), torch.float32)
    boxes, labels = [], []
    for ann in self.by_image.get(info['id'], []):
      x, y, w, h = ann['bbox']
      if w > 0 and h > 0:
        boxes.append([x, y, x + w, y + h])
        labels.append(self.label_of[ann['category_id']])
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(labels, dtype=torch.int64)
    if self.train and random.random() < 0.5:  # the recipe's RandomHorizontalFlip(0.5)
      image = image.flip(-1)
      width = image.shape[-1]
      boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                           boxes[:, 3]], dim=1)
    return image, {'boxes': boxes, 'labels': labels, 'image_id': info['id']}


def _collate(batch):
  return tuple(zip(*batch))


def _worker_init(worker_id):
  del worker_id
  torch.set_num_threads(1)
  random.seed(torch.initial_seed() % 2**32)


def build_model(num_classes, size):
  """SSDLite320-MobileNetV3-Large architecture, random init, at `size`x`size`."""
  model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                        num_classes=num_classes)
  old = model.transform
  model.transform = GeneralizedRCNNTransform(size, size, old.image_mean, old.image_std,
                                             size_divisible=1, fixed_size=(size, size))
  return model


def learning_rate(step, steps, base_lr, warmup_iters):
  """Linear warm-up (torchvision reference: factor 1/1000) times a per-step cosine."""
  cosine = 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
  if step < warmup_iters:
    alpha = step / warmup_iters
    return base_lr * cosine * (WARMUP_FACTOR * (1 - alpha) + alpha)
  return base_lr * cosine


def _format_seconds(seconds):
  minutes, secs = divmod(int(round(seconds)), 60)
  return f'{minutes}m{secs:02d}s'


def train(model, loader, args, base_lr, warmup_iters):
  """SGD loop over `args.steps` steps; returns the img/s of each progress window."""
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.SGD(params, lr=base_lr, momentum=MOMENTUM,
                              weight_decay=WEIGHT_DECAY)
  model.train()
  rates = []
  step, last_time, last_step = 0, time.perf_counter(), 0
  while step < args.steps:
    for images, targets in loader:
      if step >= args.steps:
        break
      lr = learning_rate(step, args.steps, base_lr, warmup_iters)
      for group in optimizer.param_groups:
        group['lr'] = lr
      targets = [{'boxes': t['boxes'], 'labels': t['labels']} for t in targets]
      losses = model(list(images), targets)
      loss = sum(losses.values())
      if not torch.isfinite(loss.detach()):
        print(f'error: non-finite loss {loss.item()} at step {step + 1}', file=sys.stderr,
              flush=True)
        sys.exit(2)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      step += 1
      if step % args.log_every == 0 or step == args.steps:
        now = time.perf_counter()
        rate = (step - last_step) * args.batch_size / (now - last_time)
        rates.append(rate)
        eta = (args.steps - step) * (now - last_time) / (step - last_step)
        print(f'step {step}/{args.steps} | loss {loss.item():.4f} '
              f'(cls_loss {losses["classification"].item():.4f}, '
              f'box_loss {losses["bbox_regression"].item():.4f}) | lr {lr:.3g} | '
              f'{rate:.1f} img/s | ETA {_format_seconds(eta)}', flush=True)
        last_time, last_step = now, step
  return rates


@torch.no_grad()
def evaluate(model, args, category_ids):
  """pycocotools bbox stats on --val_json: dataset category ids, original-image xywh."""
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  dataset = CocoDetection(args.val_json, args.val_dir, category_ids, train=False)
  loader = torch.utils.data.DataLoader(dataset, batch_size=args.eval_batch_size,
                                       shuffle=False, num_workers=0, collate_fn=_collate)
  model.eval()
  results = []
  for images, targets in loader:
    # postprocess maps boxes back to each input's original size (xyxy pixels)
    for output, target in zip(model(list(images)), targets):
      for box, score, label in zip(output['boxes'].tolist(), output['scores'].tolist(),
                                   output['labels'].tolist()):
        x1, y1, x2, y2 = box
        results.append({'image_id': target['image_id'],
                        'category_id': category_ids[label - 1],
                        'bbox': [x1, y1, x2 - x1, y2 - y1], 'score': score})
  groundtruth = COCO(args.val_json)
  if not results:
    print('no detections on the val split: every stat is 0', flush=True)
    return {name: 0.0 for name in STAT_NAMES}, 0
  evaluator = COCOeval(groundtruth, groundtruth.loadRes(results), 'bbox')
  evaluator.params.imgIds = [image['id'] for image in dataset.images]
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}, len(results)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--train_json', required=True)
  parser.add_argument('--train_dir', required=True)
  parser.add_argument('--val_json', help='omit: train only (throughput runs)')
  parser.add_argument('--val_dir')
  parser.add_argument('--size', type=int, default=256)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--eval_batch_size', type=int, default=16)
  parser.add_argument('--steps', type=int, required=True)
  parser.add_argument('--num_classes', type=int, default=0,
                      help='model outputs incl. background (0: dataset categories + 1)')
  parser.add_argument('--lr', type=float, default=0.0,
                      help=f'0: {REFERENCE_LR} x batch_size / {REFERENCE_BATCH}')
  parser.add_argument('--warmup_steps', type=int, default=-1,
                      help='-1: min(1000, iterations per epoch - 1), as the reference')
  parser.add_argument('--log_every', type=int, default=10)
  parser.add_argument('--workers', type=int, default=1, help='DataLoader worker processes')
  parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--max_train_images', type=int, default=0)
  parser.add_argument('--output', help='JSON file for the stats and run numbers')
  args = parser.parse_args(argv)

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  random.seed(args.seed)
  np.random.seed(args.seed)
  with open(args.train_json, encoding='utf-8') as f:
    category_ids = sorted(c['id'] for c in json.load(f)['categories'])
  num_classes = args.num_classes or len(category_ids) + 1
  if num_classes < len(category_ids) + 1:
    parser.error(f'--num_classes {num_classes} < {len(category_ids)} categories + 1')
  dataset = CocoDetection(args.train_json, args.train_dir, category_ids, train=True,
                          max_images=args.max_train_images)
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
      num_workers=args.workers, collate_fn=_collate, worker_init_fn=_worker_init,
      persistent_workers=args.workers > 0)
  base_lr = args.lr or REFERENCE_LR * args.batch_size / REFERENCE_BATCH
  warmup = (args.warmup_steps if args.warmup_steps >= 0
            else min(MAX_WARMUP_ITERS, len(loader) - 1))
  model = build_model(num_classes, args.size)
  print(f'torchvision {torchvision.__version__} ssdlite320_mobilenet_v3_large at '
        f'{args.size}x{args.size}, {num_classes} classes, '
        f'{sum(p.numel() for p in model.parameters()):,} params, {len(dataset)} images, '
        f'batch {args.batch_size}, {args.steps} steps, lr {base_lr:.4g}, warm-up {warmup}, '
        f'{torch.get_num_threads()} threads, {args.workers} loader workers', flush=True)
  train_start = time.time()
  rates = train(model, loader, args, base_lr, warmup)
  train_end = time.time()
  out = {'steps': args.steps, 'batch_size': args.batch_size, 'size': args.size,
         'num_classes': num_classes, 'base_lr': base_lr, 'warmup_steps': warmup,
         'rates': rates, 'train_seconds': train_end - train_start,
         'seconds_to_train_end': train_end - START,
         'median_img_per_s': statistics.median(rates) if rates else None}
  if args.val_json:
    stats, count = evaluate(model, args, category_ids)
    out.update(stats=stats, num_detections=count, eval_seconds=time.time() - train_end)
    print('COCO metrics of the final evaluation:', flush=True)
    for name in STAT_NAMES:
      print(f'  {name:9s} {stats[name]:.4f}', flush=True)
  if args.output:
    with open(args.output, 'w', encoding='utf-8') as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
