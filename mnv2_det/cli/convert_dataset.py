"""tools/convert_dataset.py: Pascal VOC or YOLO annotations -> one COCO instances JSON.

    python tools/convert_dataset.py --format voc --annotations_dir VOC/Annotations \
        --image_dir VOC/JPEGImages [--split_file VOC/ImageSets/Main/train.txt] \
        [--classes classes.txt] [--difficult crowd|keep|drop] --output train.json
    python tools/convert_dataset.py --format yolo --image_dir data/images/train \
        --classes data.yaml [--labels_dir data/labels/train] --output train.json

The JSON's file_names are relative to --image_dir: point the data config's
`annotation_file` at --output and `image_dir` at the same --image_dir. The rules are in
mnv2_det/data/convert_voc.py and convert_yolo.py. The output is written all or nothing
(a temp file renamed at the end) after the COCO reader has read it back; an existing
--output needs --overwrite. A malformed input is one `error: FILE:LINE: ...` line and
exit code 2, with nothing written.
"""

import argparse
import json
from typing import Optional, Sequence

from mnv2_det.cli import flags
from mnv2_det.data import coco_reader
from mnv2_det.data import convert_voc
from mnv2_det.data import convert_yolo
from mnv2_det.export import atomic

FORMATS = ('voc', 'yolo')
# Names printed per list of skipped images / unlabelled images / orphan labels.
MAX_PRINTED = 10
VOC_ONLY = ('annotations_dir', 'split_file')
YOLO_ONLY = ('labels_dir',)


def _convert(args):
  given = lambda names: [f'--{n}' for n in names if getattr(args, n)]
  if args.format == 'voc':
    if given(YOLO_ONLY):
      raise ValueError(f'{", ".join(given(YOLO_ONLY))}: only with --format yolo')
    if not args.annotations_dir:
      raise ValueError('--format voc needs --annotations_dir (the folder of .xml files)')
    return convert_voc.convert_voc(args.annotations_dir, args.image_dir, args.split_file,
                                   args.classes, args.difficult or 'crowd')
  if given(VOC_ONLY) or args.difficult:
    raise ValueError(f'{", ".join(given(VOC_ONLY + ("difficult",)))}: only with '
                     '--format voc')
  if not args.classes:
    raise ValueError('--format yolo needs --classes (classes.txt or data.yaml)')
  return convert_yolo.convert_yolo(args.image_dir, args.classes, args.labels_dir)


def _print_list(title: str, items) -> None:
  if items:
    print(f'{title}: {len(items)}')
    for item in items[:MAX_PRINTED]:
      print('  ' + (': '.join(item) if isinstance(item, tuple) else item))
    if len(items) > MAX_PRINTED:
      print(f'  ... and {len(items) - MAX_PRINTED} more')


def run(args) -> dict:
  """The CLI; returns the COCO dict written."""
  atomic.check_output(args.output, args.overwrite)
  result = _convert(args)
  coco = result.coco
  with atomic.atomic_output(args.output, is_dir=False, overwrite=args.overwrite) as tmp:
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(coco, f)
    coco_reader.read_coco(tmp, args.image_dir, check_images='none')  # reads back
  crowd = sum(a['iscrowd'] for a in coco['annotations'])
  print(f'wrote {args.output}: {len(coco["images"])} images ({result.negatives} without '
        f'boxes), {len(coco["annotations"])} annotations ({crowd} iscrowd), '
        f'{len(coco["categories"])} categories: '
        + ', '.join(f'{c["id"]} {c["name"]}' for c in coco['categories']))
  _print_list('skipped images', result.skipped_images)
  _print_list('images without a label file (negatives)', result.unlabelled)
  _print_list('label files without an image', result.orphan_labels)
  return coco


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--format', required=True, choices=FORMATS)
  parser.add_argument('--image_dir', required=True,
                      help='image folder (the JSON file_names are relative to it)')
  parser.add_argument('--output', required=True, help='COCO JSON to write')
  parser.add_argument('--overwrite', action='store_true', help='replace --output')
  parser.add_argument('--classes', help='class list: one name per line, or a data.yaml '
                      'with names (YOLO: required; VOC: optional, fixes the ids)')
  parser.add_argument('--annotations_dir', help='VOC: folder of .xml files')
  parser.add_argument('--split_file', help='VOC: ImageSets/Main/<split>.txt (image ids)')
  parser.add_argument('--difficult', choices=convert_voc.DIFFICULT_POLICIES,
                      help='VOC: difficult objects become iscrowd (crowd, default), '
                      'ordinary boxes (keep) or are dropped (drop)')
  parser.add_argument('--labels_dir', help='YOLO: label folder (default: image_dir with '
                      'its last "images" folder named "labels")')
  args = parser.parse_args(argv)
  return flags.run_cli(lambda: run(args))
