"""Pascal VOC XML annotations -> a COCO instances dict (then read as any COCO JSON).

    VOC2012/Annotations/*.xml   (or the ids listed in ImageSets/Main/<split>.txt)
    VOC2012/JPEGImages/         (image_dir: the COCO file_names are relative to it)

Per XML, `<annotation>` with:
  <filename>  the image, relative to image_dir; when absent or not found there,
              `<xml stem>.<ext>` (image_files.IMAGE_EXTENSIONS) is tried;
  <size>      <width> and <height>; taken from the image when absent or 0, and
              must equal the image's pixel size when given;
  <object>*   <name>, <bndbox> with <xmin> <ymin> <xmax> <ymax>, optional
              <difficult> and <truncated> flags (0 / 1).

Coordinates: VOC numbers pixels from 1 and a box includes its xmax / ymax pixel, so
the COCO box is x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1, h = ymax - ymin + 1
(the VOC devkit's and Detectron's convention). Boxes reaching past the image are
kept; the COCO reader clips them (and tools/check_data.py lists them).

`difficult`: 'crowd' (default) makes a difficult object `iscrowd: 1`: COCO evaluation
ignores it as VOC's own evaluation does, and training leaves it out of the targets;
'keep' makes it an ordinary box; 'drop' leaves it out. Every annotation keeps
`difficult` and `truncated` (0 / 1) as extra fields.

Categories: a class list file (convert_common.read_class_list) fixes the names and
their order (ids 1..K) and a name outside it is an error; without one, the names
found, sorted. Missing or unreadable images are skipped and named (training would
skip them too). Any other problem is ONE ValueError `FILE:LINE: ...` naming the XML
element: malformed XML, a missing field, a non-numeric coordinate, xmax < xmin, a
flag other than 0 / 1, a <size> that disagrees with the image.
"""

import dataclasses
import math
import os
from typing import List, Optional
from xml.parsers import expat

from mnv2_det.data import convert_common
from mnv2_det.data.convert_common import where
from mnv2_det.data.image_files import IMAGE_EXTENSIONS

DIFFICULT_POLICIES = ('crowd', 'keep', 'drop')
# VOC pixel indices start at 1 and include the last pixel.
VOC_FIRST_PIXEL = 1
BOX_FIELDS = ('xmin', 'ymin', 'xmax', 'ymax')


@dataclasses.dataclass
class _Node:
  """An XML element with the line it starts on."""
  tag: str
  line: int
  text: str = ''
  children: List['_Node'] = dataclasses.field(default_factory=list)

  def find(self, tag: str) -> Optional['_Node']:
    return next((c for c in self.children if c.tag == tag), None)

  def find_all(self, tag: str) -> List['_Node']:
    return [c for c in self.children if c.tag == tag]


def parse_xml(path: str) -> _Node:
  """The root element of an XML file, with line numbers (expat, no extra package)."""
  parser = expat.ParserCreate()
  stack: List[_Node] = []
  roots: List[_Node] = []

  def start(tag, _attrs):
    node = _Node(tag, parser.CurrentLineNumber)
    (stack[-1].children if stack else roots).append(node)
    stack.append(node)

  def chars(data):
    if stack:
      stack[-1].text += data

  parser.StartElementHandler = start
  parser.EndElementHandler = lambda _tag: stack.pop()
  parser.CharacterDataHandler = chars
  try:
    with open(path, 'rb') as f:
      parser.ParseFile(f)
  except expat.ExpatError as e:
    raise ValueError(f'{path}:{e.lineno}: malformed XML ({expat.ErrorString(e.code)})'
                     ) from None
  return roots[0]


def _child(node: _Node, tag: str, path: str) -> _Node:
  child = node.find(tag)
  if child is None:
    raise ValueError(f'{path}:{node.line}: <{node.tag}> has no <{tag}>')
  return child


def _number(node: _Node, tag: str, path: str) -> float:
  child = _child(node, tag, path)
  try:
    value = float(child.text.strip())
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise ValueError(f'{path}:{child.line}: <{tag}> must be a number, got '
                     f'{child.text.strip()!r}')
  return value


def _flag(node: _Node, tag: str, path: str) -> int:
  child = node.find(tag)
  if child is None:
    return 0
  text = child.text.strip()
  if text not in ('0', '1'):
    raise ValueError(f'{path}:{child.line}: <{tag}> must be 0 or 1, got {text!r}')
  return int(text)


def _image_file(root: _Node, xml_path: str, image_dir: str) -> Optional[str]:
  """The image's name relative to image_dir, or None when no file is found."""
  node = root.find('filename')
  name = node.text.strip() if node is not None else ''
  if name and os.path.isfile(os.path.join(image_dir, name)):
    return name
  stem = os.path.splitext(os.path.basename(xml_path))[0]
  for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
    if os.path.isfile(os.path.join(image_dir, stem + ext)):
      return stem + ext
  return None


def _size(root: _Node, xml_path: str, actual) -> None:
  """Checks <size> against the image's (width, height) when it gives one."""
  node = root.find('size')
  if node is None:
    return
  given = tuple(int(_number(node, tag, xml_path)) for tag in ('width', 'height'))
  if min(given) > 0 and given != tuple(actual):
    raise ValueError(f'{xml_path}:{node.line}: <size> {given[0]}x{given[1]} differs from '
                     f'the image\'s {actual[0]}x{actual[1]} (width x height)')


def _objects(root: _Node, xml_path: str, image_id: int, known, classes_file, difficult):
  """Annotation dicts (category by name, `_line` for errors) of one XML."""
  out = []
  for obj in root.find_all('object'):
    name_node = _child(obj, 'name', xml_path)
    name = name_node.text.strip()
    if not name:
      raise ValueError(f'{xml_path}:{name_node.line}: empty <name>')
    if known is not None and name not in known:
      raise ValueError(f'{xml_path}:{name_node.line}: class {name!r} is not in '
                       f'{classes_file}')
    box = _child(obj, 'bndbox', xml_path)
    xmin, ymin, xmax, ymax = (_number(box, tag, xml_path) for tag in BOX_FIELDS)
    if xmax < xmin or ymax < ymin:
      raise ValueError(f'{xml_path}:{box.line}: <bndbox> has xmax < xmin or ymax < ymin '
                       f'({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})')
    is_difficult = _flag(obj, 'difficult', xml_path)
    truncated = _flag(obj, 'truncated', xml_path)
    if is_difficult and difficult == 'drop':
      continue
    w, h = xmax - xmin + 1, ymax - ymin + 1
    out.append({'image_id': image_id, 'category_name': name,
                'bbox': [xmin - VOC_FIRST_PIXEL, ymin - VOC_FIRST_PIXEL, w, h],
                'area': w * h, 'iscrowd': int(is_difficult and difficult == 'crowd'),
                'difficult': is_difficult, 'truncated': truncated})
  return out


def _xml_files(annotations_dir: str, split_file: Optional[str]) -> List[str]:
  if not os.path.isdir(annotations_dir):
    raise ValueError(f'{annotations_dir}: annotations folder not found')
  if split_file is None:
    files = sorted(os.path.join(annotations_dir, n) for n in os.listdir(annotations_dir)
                   if n.lower().endswith('.xml'))
    if not files:
      raise ValueError(f'{annotations_dir}: no .xml files')
    return files
  if not os.path.isfile(split_file):
    raise ValueError(f'{split_file}: split file not found')
  files = []
  with open(split_file, 'r', encoding='utf-8') as f:
    for line, text in enumerate(f, 1):
      if not text.strip():
        continue
      xml = os.path.join(annotations_dir, text.split()[0] + '.xml')
      if not os.path.isfile(xml):
        raise ValueError(f'{split_file}:{line}: {xml} not found')
      files.append(xml)
  if not files:
    raise ValueError(f'{split_file}: lists no image ids')
  return files


def convert_voc(annotations_dir: str, image_dir: str, split_file: Optional[str] = None,
                classes_file: Optional[str] = None,
                difficult: str = 'crowd') -> convert_common.Converted:
  """Converts a VOC folder (module docstring); returns the COCO dict and the skips."""
  if difficult not in DIFFICULT_POLICIES:
    raise ValueError(f'difficult={difficult!r} is not one of {DIFFICULT_POLICIES}')
  names = convert_common.read_class_list(classes_file) if classes_file else None
  known = set(names) if names is not None else None
  result = convert_common.Converted(coco={})
  images, annotations = [], []
  for xml_path in _xml_files(annotations_dir, split_file):
    root = parse_xml(xml_path)
    if root.tag != 'annotation':
      raise ValueError(f'{xml_path}:{root.line}: the root element is <{root.tag}>, not '
                       '<annotation>')
    file_name = _image_file(root, xml_path, image_dir)
    if file_name is None:
      result.skipped_images.append((xml_path, f'no image for it in {image_dir}'))
      continue
    actual, reason = convert_common.image_size(os.path.join(image_dir, file_name))
    if actual is None:
      result.skipped_images.append((os.path.join(image_dir, file_name), reason))
      continue
    _size(root, xml_path, actual)
    image_id = len(images) + 1
    objects = _objects(root, xml_path, image_id, known, classes_file, difficult)
    images.append({'id': image_id, 'file_name': file_name, 'width': actual[0],
                   'height': actual[1], 'annotation_file': os.path.basename(xml_path)})
    result.negatives += int(not objects)
    annotations.extend(objects)
  convert_common.check_not_empty(images, annotations_dir, result.skipped_images)
  if names is None:
    names = sorted({a['category_name'] for a in annotations})
  ids = {n: i + convert_common.FIRST_CATEGORY_ID for i, n in enumerate(names)}
  for a in annotations:
    a['category_id'] = ids[a.pop('category_name')]
  result.coco = convert_common.coco_dict(
      images, annotations, names, f'converted from Pascal VOC {annotations_dir}')
  return result
