"""tools/convert_dataset.py: Pascal VOC and YOLO folders -> COCO JSON that the reader and
the input pipeline read; every malformed input is one error line naming file and line."""

import json
import os
import textwrap

import numpy as np
from PIL import Image
import pytest

from mnv2_det.cli import convert_dataset
from mnv2_det.data import coco_reader
from mnv2_det.data import convert_voc
from mnv2_det.data import convert_yolo
from mnv2_det.data import input_pipeline

W, H = 64, 48  # image width, height


def _image(path, w=W, h=H):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)


def _voc_object(name, box, difficult=None, truncated=None):
  flags = ''.join(f'<{t}>{v}</{t}>' for t, v in (('difficult', difficult),
                                                  ('truncated', truncated)) if v is not None)
  xmin, ymin, xmax, ymax = box
  return (f'<object><name>{name}</name>{flags}<bndbox><xmin>{xmin}</xmin>'
          f'<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>')


def _voc_xml(filename, objects, size=(W, H)):
  size_xml = '' if size is None else (f'<size><width>{size[0]}</width><height>{size[1]}'
                                      '</height><depth>3</depth></size>')
  return (f'<annotation><folder>VOC</folder><filename>{filename}</filename>{size_xml}'
          + ''.join(objects) + '</annotation>')


@pytest.fixture
def voc(tmp_path):
  """3 XMLs: a dog + a difficult cat; a truncated cat, no <size>; a negative."""
  root = tmp_path / 'VOC'
  ann, img = root / 'Annotations', root / 'JPEGImages'
  ann.mkdir(parents=True)
  for name in ('a', 'b', 'c'):
    _image(str(img / f'{name}.jpg'))
  (ann / 'a.xml').write_text(_voc_xml('a.jpg', [
      _voc_object('dog', (1, 1, 10, 20), difficult=0, truncated=0),
      _voc_object('cat', (5, 6, 64, 48), difficult=1)]))
  (ann / 'b.xml').write_text(_voc_xml('b.jpg', [
      _voc_object('cat', (11.5, 2, 30.5, 12), truncated=1)], size=None))
  (ann / 'c.xml').write_text(_voc_xml('c.jpg', []))
  return root


def _run(argv, capsys):
  code = convert_dataset.main(argv)
  out, err = capsys.readouterr()
  return code, out, err


def _voc_args(root, out, *extra):
  return ['--format', 'voc', '--annotations_dir', str(root / 'Annotations'),
          '--image_dir', str(root / 'JPEGImages'), '--output', str(out), *extra]


def test_voc_converts_and_reads_back(voc, tmp_path, capsys):
  out = tmp_path / 'voc.json'
  code, stdout, _ = _run(_voc_args(voc, out), capsys)
  assert code == 0
  coco = json.loads(out.read_text())
  assert coco['categories'] == [{'id': 1, 'name': 'cat', 'supercategory': ''},
                                {'id': 2, 'name': 'dog', 'supercategory': ''}]
  assert [(i['id'], i['file_name'], i['width'], i['height']) for i in coco['images']] == [
      (1, 'a.jpg', W, H), (2, 'b.jpg', W, H), (3, 'c.jpg', W, H)]
  anns = [(a['image_id'], a['category_id'], a['bbox'], a['area'], a['iscrowd'],
           a['difficult'], a['truncated']) for a in coco['annotations']]
  assert anns == [
      (1, 2, [0, 0, 10, 20], 200, 0, 0, 0),  # VOC 1..10 inclusive = COCO x 0, w 10
      (1, 1, [4, 5, 60, 43], 2580, 1, 1, 0),  # difficult -> iscrowd
      (2, 1, [10.5, 1, 20, 11], 220, 0, 0, 1)]  # float coordinates; size from the image
  assert 'wrote' in stdout and '3 images (1 without boxes), 3 annotations (1 iscrowd)' in stdout

  ds = coco_reader.read_coco(str(out), str(voc / 'JPEGImages'))
  assert ds.stats.num_images == 3 and ds.stats.num_crowd == 1
  np.testing.assert_allclose(ds.records[0].boxes[0], [0, 0, 20 / H, 10 / W], rtol=1e-6)
  # ... and the training pipeline takes it.
  images, labels = next(iter(input_pipeline.build_dataset(
      str(out), str(voc / 'JPEGImages'), is_training=False, batch_size=3,
      output_size=[32, 32])))
  assert images.shape == (3, 32, 32, 3)
  assert labels['num_gt'].numpy().tolist() == [1, 1, 0]  # the crowd box is not a target
  np.testing.assert_allclose(labels['gt_boxes'][1, 0].numpy(),
                             [1 / H, 10.5 / W, 12 / H, 30.5 / W], rtol=1e-6)


@pytest.mark.parametrize('policy, expected', [
    ('keep', [(2, 0), (1, 0), (1, 0)]), ('drop', [(2, 0), (1, 0)])])
def test_voc_difficult_policies(voc, tmp_path, capsys, policy, expected):
  out = tmp_path / 'voc.json'
  assert _run(_voc_args(voc, out, '--difficult', policy), capsys)[0] == 0
  coco = json.loads(out.read_text())
  assert [(a['category_id'], a['iscrowd']) for a in coco['annotations']] == expected


def test_voc_class_list_and_split_file(voc, tmp_path, capsys):
  (tmp_path / 'classes.txt').write_text('dog\ncat\n\n')
  (tmp_path / 'train.txt').write_text('b\n\na  1\n')
  out = tmp_path / 'voc.json'
  assert _run(_voc_args(voc, out, '--classes', str(tmp_path / 'classes.txt'),
                        '--split_file', str(tmp_path / 'train.txt')), capsys)[0] == 0
  coco = json.loads(out.read_text())
  assert [c['name'] for c in coco['categories']] == ['dog', 'cat']  # the list's order
  assert [i['file_name'] for i in coco['images']] == ['b.jpg', 'a.jpg']  # split order
  assert [(a['image_id'], a['category_id']) for a in coco['annotations']] == [
      (1, 2), (2, 1), (2, 2)]


def test_voc_missing_image_is_named_skip(voc, tmp_path, capsys):
  os.remove(voc / 'JPEGImages' / 'c.jpg')
  out = tmp_path / 'voc.json'
  code, stdout, _ = _run(_voc_args(voc, out), capsys)
  assert code == 0
  assert 'skipped images: 1' in stdout and 'c.xml' in stdout
  assert len(json.loads(out.read_text())['images']) == 2


def test_voc_filename_falls_back_to_xml_stem(voc, tmp_path, capsys):
  (voc / 'Annotations' / 'c.xml').write_text(_voc_xml('renamed.png', []))
  out = tmp_path / 'voc.json'
  assert _run(_voc_args(voc, out), capsys)[0] == 0
  assert json.loads(out.read_text())['images'][2]['file_name'] == 'c.jpg'


MALFORMED_VOC = [
    # (xml text, line, message part)
    ('<annotation>\n<filename>a.jpg</filename>\n<object>\n<name>dog</name>\n</object>\n'
     '</annotation>', 3, '<object> has no <bndbox>'),
    ('<annotation>\n<filename>a.jpg</filename>\n<object><bndbox><xmin>1</xmin><ymin>1'
     '</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>\n</annotation>', 3,
     '<object> has no <name>'),
    ('<annotation>\n<filename>a.jpg</filename>\n<object><name>dog</name>\n<bndbox>\n'
     '<xmin>1</xmin><ymin>1</ymin><xmax>2</xmax></bndbox></object>\n</annotation>', 4,
     '<bndbox> has no <ymax>'),
    ('<annotation>\n<filename>a.jpg</filename>\n<object><name>dog</name><bndbox>\n'
     '<xmin>1</xmin>\n<ymin>one</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>\n'
     '</annotation>', 5, "<ymin> must be a number, got 'one'"),
    ('<annotation>\n<filename>a.jpg</filename>\n<object><name>dog</name>\n<bndbox>'
     '<xmin>9</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>\n'
     '</annotation>', 4, 'xmax < xmin'),
    ('<annotation>\n<filename>a.jpg</filename>\n<object><name>dog</name>\n'
     '<difficult>yes</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>'
     '<ymax>2</ymax></bndbox></object>\n</annotation>', 4,
     "<difficult> must be 0 or 1, got 'yes'"),
    ('<annotation>\n<filename>a.jpg</filename>\n<size><width>640</width><height>480'
     '</height></size>\n</annotation>', 3, '<size> 640x480 differs from the image'),
    ('<annotation>\n<filename>a.jpg</filename>\n<object><name>dog</name>\n</annotation>',
     4, 'malformed XML (mismatched tag)'),
    ('<voc>\n</voc>', 1, 'the root element is <voc>, not <annotation>'),
]


@pytest.mark.parametrize('xml, line, message', MALFORMED_VOC)
def test_voc_malformed_is_one_error_with_file_and_line(voc, tmp_path, capsys, xml, line,
                                                       message):
  (voc / 'Annotations' / 'a.xml').write_text(xml)
  out = tmp_path / 'voc.json'
  code, stdout, err = _run(_voc_args(voc, out), capsys)
  assert code == 2 and stdout == ''
  assert err.count('\n') == 1, err
  assert err.startswith(f'error: {voc / "Annotations" / "a.xml"}:{line}: '), err
  assert message in err
  assert not out.exists() and os.listdir(tmp_path) == ['VOC']  # nothing written


def test_voc_unknown_class_with_class_list(voc, tmp_path, capsys):
  (tmp_path / 'classes.txt').write_text('dog\n')
  code, _, err = _run(_voc_args(voc, tmp_path / 'o.json', '--classes',
                                str(tmp_path / 'classes.txt')), capsys)
  assert code == 2
  assert err == (f"error: {voc / 'Annotations' / 'a.xml'}:1: class 'cat' is not in "
                 f"{tmp_path / 'classes.txt'}\n")


# ----------------------------------------------------------------------------- YOLO
@pytest.fixture
def yolo(tmp_path):
  """images/train/{a.jpg, sub/b.png, c.jpg}; labels for a and b, none for c; an orphan."""
  root = tmp_path / 'data'
  _image(str(root / 'images' / 'train' / 'a.jpg'))
  _image(str(root / 'images' / 'train' / 'sub' / 'b.png'), w=100, h=50)
  _image(str(root / 'images' / 'train' / 'c.jpg'))
  labels = root / 'labels' / 'train'
  (labels / 'sub').mkdir(parents=True)
  (labels / 'a.txt').write_text('0 0.5 0.5 0.25 0.5\n\n1 0.125 0.25 0.25 0.5\n')
  (labels / 'sub' / 'b.txt').write_text('2 0.875 0.5 0.5 1.0\n')
  (labels / 'orphan.txt').write_text('0 0.5 0.5 0.1 0.1\n')
  (root / 'data.yaml').write_text(textwrap.dedent('''\
      path: .
      train: images/train
      nc: 3
      names: {0: person, 1: car, 2: dog}
      '''))
  return root


def _yolo_args(root, out, *extra):
  return ['--format', 'yolo', '--image_dir', str(root / 'images' / 'train'),
          '--classes', str(root / 'data.yaml'), '--output', str(out), *extra]


def test_yolo_converts_and_reads_back(yolo, tmp_path, capsys):
  out = tmp_path / 'yolo.json'
  code, stdout, _ = _run(_yolo_args(yolo, out), capsys)
  assert code == 0
  coco = json.loads(out.read_text())
  assert [(c['id'], c['name']) for c in coco['categories']] == [
      (1, 'person'), (2, 'car'), (3, 'dog')]
  assert [(i['file_name'], i['width'], i['height']) for i in coco['images']] == [
      ('a.jpg', W, H), ('c.jpg', W, H), ('sub/b.png', 100, 50)]
  assert [(a['image_id'], a['category_id'], a['bbox'], a['area'])
          for a in coco['annotations']] == [
              (1, 1, [24.0, 12.0, 16.0, 24.0], 384.0),
              (1, 2, [0.0, 0.0, 16.0, 24.0], 384.0),
              (3, 3, [62.5, 0.0, 50.0, 50.0], 2500.0)]  # reaches past x = 100
  assert 'images without a label file (negatives): 1' in stdout
  assert str(yolo / 'labels' / 'train' / 'c.txt') in stdout
  assert 'label files without an image: 1' in stdout and 'orphan.txt' in stdout

  ds = coco_reader.read_coco(str(out), str(yolo / 'images' / 'train'))
  assert ds.stats.num_images == 3 and ds.stats.clipped_boxes == 1
  np.testing.assert_allclose(ds.records[2].boxes, [[0.0, 0.625, 1.0, 1.0]], rtol=1e-6)
  _, labels = next(iter(input_pipeline.build_dataset(
      str(out), str(yolo / 'images' / 'train'), is_training=False, batch_size=3,
      output_size=[32, 32])))
  assert labels['num_gt'].numpy().tolist() == [2, 0, 1]
  np.testing.assert_allclose(labels['gt_boxes'][0, :2].numpy(),
                             [[0.25, 0.375, 0.75, 0.625], [0.0, 0.0, 0.5, 0.25]], rtol=1e-6)


def test_yolo_classes_txt_and_labels_beside_images(tmp_path, capsys):
  _image(str(tmp_path / 'imgs' / 'x.jpg'))
  (tmp_path / 'imgs' / 'x.txt').write_text('1 0.5 0.5 0.5 0.5')
  (tmp_path / 'imgs' / 'classes.txt').write_text('a\nb\n')
  out = tmp_path / 'o.json'
  code, stdout, _ = _run(['--format', 'yolo', '--image_dir', str(tmp_path / 'imgs'),
                          '--classes', str(tmp_path / 'imgs' / 'classes.txt'),
                          '--output', str(out)], capsys)
  assert code == 0 and 'label files without an image' not in stdout
  coco = json.loads(out.read_text())
  assert [(a['category_id'], a['bbox']) for a in coco['annotations']] == [
      (2, [16.0, 12.0, 32.0, 24.0])]


def test_default_labels_dir():
  assert convert_yolo.default_labels_dir('/d/images/train') == '/d/labels/train'
  assert convert_yolo.default_labels_dir('/d/images/x/images/v') == '/d/images/x/labels/v'
  assert convert_yolo.default_labels_dir('/d/pics') == '/d/pics'


MALFORMED_YOLO = [
    ('0 0.5 0.5 0.25\n', 1, 'expected 5 values "class cx cy w h", got 4'),
    ('0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n', 2,
     'class index 3 is not in 0..2 ({yaml} lists 3 classes)'),
    ('\n-1 0.5 0.5 0.2 0.2\n', 2, 'class index -1 is not in 0..2'),
    ('1.0 0.5 0.5 0.2 0.2\n', 1, "class index must be an integer, got '1.0'"),
    ('0 1.2 0.5 0.2 0.2\n', 1, 'cx=1.2 is outside [0, 1]'),
    ('0 0.5 0.5 0.2 -0.1\n', 1, 'h=-0.1 is outside [0, 1]'),
    ('0 0.5 0.5 0 0.2\n', 1, 'w must be > 0'),
    ('0 0.5 nan 0.2 0.2\n', 1, "cy must be a number, got 'nan'"),
    ('0 0.5 0.5 0.2 0.2 0.9\n', 1, 'expected 5 values'),
]


@pytest.mark.parametrize('text, line, message', MALFORMED_YOLO)
def test_yolo_malformed_is_one_error_with_file_and_line(yolo, tmp_path, capsys, text, line,
                                                        message):
  label = yolo / 'labels' / 'train' / 'a.txt'
  label.write_text(text)
  out = tmp_path / 'yolo.json'
  code, stdout, err = _run(_yolo_args(yolo, out), capsys)
  assert code == 2 and stdout == ''
  assert err.count('\n') == 1 and err.startswith(f'error: {label}:{line}: ')
  assert message.format(yaml=yolo / 'data.yaml') in err
  assert not out.exists()


@pytest.mark.parametrize('name, text, message', [
    ('data.yaml', 'names: [a, b]\nnc: 3\n', '`nc` is 3 but `names` lists 2 classes'),
    ('data.yaml', 'names: {0: a, 2: b}\n', '`names` keys must be the class indices 0..1'),
    ('data.yaml', 'train: x\n', 'no `names` list'),
    ('data.yaml', 'names: [a, b\n', 'malformed YAML'),
    ('classes.txt', 'a\n\nb\n', 'empty class name'),
    ('classes.txt', 'a\nb\na\n', "class 'a' is listed twice"),
])
def test_bad_class_list_names_the_file(yolo, tmp_path, capsys, name, text, message):
  classes = tmp_path / name
  classes.write_text(text)
  args = _yolo_args(yolo, tmp_path / 'o.json')
  args[args.index('--classes') + 1] = str(classes)
  code, _, err = _run(args, capsys)
  assert code == 2 and err.count('\n') == 1
  assert err.startswith(f'error: {classes}') and message in err


def test_existing_output_needs_overwrite(yolo, tmp_path, capsys):
  out = tmp_path / 'yolo.json'
  out.write_text('old')
  code, _, err = _run(_yolo_args(yolo, out), capsys)
  assert code == 2 and 'already exists' in err and out.read_text() == 'old'
  assert _run(_yolo_args(yolo, out, '--overwrite'), capsys)[0] == 0
  assert len(json.loads(out.read_text())['images']) == 3


def test_flags_of_the_other_format_are_refused(yolo, voc, tmp_path, capsys):
  code, _, err = _run(_yolo_args(yolo, tmp_path / 'o.json', '--difficult', 'keep'), capsys)
  assert code == 2 and '--difficult: only with --format voc' in err
  code, _, err = _run(_voc_args(voc, tmp_path / 'o.json', '--labels_dir', 'x'), capsys)
  assert code == 2 and '--labels_dir: only with --format yolo' in err
  code, _, err = _run(['--format', 'yolo', '--image_dir', str(yolo), '--output',
                       str(tmp_path / 'o.json')], capsys)
  assert code == 2 and 'needs --classes' in err


def test_unreadable_image_skipped_by_name(yolo, tmp_path, capsys):
  bad = yolo / 'images' / 'train' / 'c.jpg'
  bad.write_bytes(b'not an image')
  code, stdout, _ = _run(_yolo_args(yolo, tmp_path / 'o.json'), capsys)
  assert code == 0 and 'skipped images: 1' in stdout and f'{bad}: unreadable image' in stdout


def test_parse_xml_lines(tmp_path):
  path = tmp_path / 'x.xml'
  path.write_text('<a>\n  <b>1</b>\n\n  <c><d>x</d></c>\n</a>')
  root = convert_voc.parse_xml(str(path))
  assert (root.tag, root.line) == ('a', 1)
  assert [(c.tag, c.line) for c in root.children] == [('b', 2), ('c', 4)]
  assert root.find('c').find('d').text == 'x'


def test_failed_write_leaves_nothing(yolo, tmp_path, capsys, monkeypatch):
  """The JSON goes to a temp file renamed only after the reader read it back."""
  def refuse(path, *args, **kwargs):
    assert os.path.isfile(path) and path != str(tmp_path / 'yolo.json')
    raise ValueError(f'{path}: refused')
  monkeypatch.setattr(convert_dataset.coco_reader, 'read_coco', refuse)
  code, _, err = _run(_yolo_args(yolo, tmp_path / 'yolo.json'), capsys)
  assert code == 2 and 'refused' in err
  assert sorted(os.listdir(tmp_path)) == ['data']  # no output, no temp file
