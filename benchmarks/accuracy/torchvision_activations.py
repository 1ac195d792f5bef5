"""Forward activation bytes of torchvision `ssdlite320_mobilenet_v3_large` in training mode.

Runs ONLY in the torch venv (benchmarks/accuracy/requirements-torch.txt), as a subprocess
of `benchmarks/benchmark.py memory`:

  .venv-torch/bin/python benchmarks/accuracy/torchvision_activations.py \
      --size 320 --batch_size 8 --num_classes 91

Sums the float32 output bytes of every leaf module (conv, BatchNorm, activation, ...) of
the model's backbone (MobileNetV3 features + SSDLite extra blocks) and head, on one
forward pass of random images [batch, 3, size, size] in train() mode. An in-place
output (same storage as the module's input, e.g. `ReLU(inplace=True)`) adds nothing.
Prints one JSON object: {"total_mb": ..., "by_module_type": {type: MB}, "import_rss_mb": ...}.
"""

import argparse
import collections
import json
import os
import sys

import torch
import torchvision  # pylint: disable=unused-import  (counted in import_rss_mb)
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import procfs  # pylint: disable=g-import-not-at-top,wrong-import-position  (stdlib only)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--size', type=int, default=320)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--num_classes', type=int, default=91)
  args = parser.parse_args()
  import_rss = procfs.vm_rss_bytes() / 2**20
  model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                        num_classes=args.num_classes)
  model.train()
  by_type = collections.Counter()

  def hook(module, inputs, output):
    if not isinstance(output, torch.Tensor):
      return
    if any(isinstance(i, torch.Tensor) and i.data_ptr() == output.data_ptr()
           for i in inputs):
      return  # in place
    by_type[type(module).__name__] += output.numel() * output.element_size()

  for part in (model.backbone, model.head):
    for module in part.modules():
      if not list(module.children()):
        module.register_forward_hook(hook)
  images = torch.rand(args.batch_size, 3, args.size, args.size)
  features = model.backbone(images)
  model.head(list(features.values()))
  print(json.dumps({'total_mb': sum(by_type.values()) / 2**20,
                    'by_module_type': {k: v / 2**20 for k, v in by_type.most_common()},
                    'import_rss_mb': import_rss}))


if __name__ == '__main__':
  main()
