"""A reader for protobuf text format (`pipeline.config`, `label_map.pbtxt`) without the
OD API's .proto definitions.

    message := (field)*
    field   := NAME [':'] ('{' message '}' | '<' message '>' | '[' values ']' | value) [',' | ';']
    value   := "string" | 'string' | number | true | false | ENUM_NAME

Every field maps to a LIST of its values in order (repeated and singular alike, since
without the schema they cannot be told apart); a nested message is a `Message`.
Adjacent string literals are concatenated, `#` starts a comment.
"""

import re
from typing import Any, Dict, List, Tuple

_TOKEN = re.compile(r'''
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf|nan)[fF]?(?![\w.]))
  | (?P<name>[A-Za-z_][\w.]*)
  | (?P<punct>[{}<>\[\]:,;])
''', re.VERBOSE)
_CLOSE = {'{': '}', '<': '>'}
_ESCAPES = {'n': '\n', 't': '\t', 'r': '\r', '"': '"', "'": "'", '\\': '\\'}


class Message(dict):
  """`{field name: [values]}` of one text-format message."""

  def one(self, name: str, default=None):
    """The last value of `name` (protobuf's rule for a repeated singular field)."""
    values = self.get(name)
    return values[-1] if values else default


class ParseError(ValueError):
  pass


def _unquote(text: str) -> str:
  body, out, i = text[1:-1], [], 0
  while i < len(body):
    if body[i] == '\\' and i + 1 < len(body):
      out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
      i += 2
    else:
      out.append(body[i])
      i += 1
  return ''.join(out)


def _tokens(text: str, source: str) -> List[Tuple[str, str, int]]:
  tokens, pos, line = [], 0, 1
  while pos < len(text):
    match = _TOKEN.match(text, pos)
    if match is None:
      raise ParseError(f'{source}:{line}: cannot read {text[pos:pos + 20]!r}')
    kind = match.lastgroup
    if kind != 'space':
      tokens.append((kind, match.group(), line))
    line += match.group().count('\n')
    pos = match.end()
  return tokens


def _scalar(kind: str, value: str) -> Any:
  if kind == 'string':
    return _unquote(value)
  if kind == 'number':
    value = value.rstrip('fF') if not value.lower().endswith(('inf', 'nan')) else value
    try:
      return int(value)
    except ValueError:
      return float(value)
  if value in ('true', 'True', 't'):
    return True
  if value in ('false', 'False', 'f'):
    return False
  return value  # an enum name


def parse(text: str, source: str = '<text>') -> Message:
  """Parses text format into nested `Message`s; ParseError names `source:line`."""
  tokens = _tokens(text, source)
  message, pos = _message(tokens, 0, None, source)
  return message


def _message(tokens, pos, close, source) -> Tuple[Message, int]:
  message = Message()
  while pos < len(tokens):
    kind, value, line = tokens[pos]
    if close is not None and value == close and kind == 'punct':
      return message, pos + 1
    if kind != 'name':
      raise ParseError(f'{source}:{line}: expected a field name, got {value!r}')
    name, pos = value, pos + 1
    if pos < len(tokens) and tokens[pos][1] == ':':
      pos += 1
    if pos >= len(tokens):
      raise ParseError(f'{source}:{line}: field {name!r} has no value')
    kind, value, line = tokens[pos]
    if kind == 'punct' and value in _CLOSE:
      child, pos = _message(tokens, pos + 1, _CLOSE[value], source)
      message.setdefault(name, []).append(child)
    elif kind == 'punct' and value == '[':
      pos += 1
      while pos < len(tokens) and tokens[pos][1] != ']':
        item, pos = _value(tokens, pos, name, source)
        message.setdefault(name, []).append(item)
        if pos < len(tokens) and tokens[pos][1] == ',':
          pos += 1
      pos += 1
    else:
      item, pos = _value(tokens, pos, name, source)
      message.setdefault(name, []).append(item)
    if pos < len(tokens) and tokens[pos][1] in (',', ';'):
      pos += 1
  if close is not None:
    raise ParseError(f'{source}: missing {close!r} at the end')
  return message, pos


def _value(tokens, pos, name, source):
  kind, value, line = tokens[pos]
  if kind == 'punct' and value in _CLOSE:
    return _message(tokens, pos + 1, _CLOSE[value], source)
  if kind not in ('string', 'number', 'name'):
    raise ParseError(f'{source}:{line}: field {name!r}: unexpected {value!r}')
  if kind == 'string':  # adjacent literals concatenate
    parts = [_unquote(value)]
    pos += 1
    while pos < len(tokens) and tokens[pos][0] == 'string':
      parts.append(_unquote(tokens[pos][1]))
      pos += 1
    return ''.join(parts), pos
  return _scalar(kind, value), pos + 1


def flatten(message: Message, prefix: str = '') -> Dict[str, Any]:
  """`{'a.b.c': value}` of every scalar (lists for repeated ones), for error messages
  and unsupported-field checks."""
  out = {}
  for name, values in message.items():
    path = f'{prefix}{name}'
    scalars = [v for v in values if not isinstance(v, Message)]
    for v in values:
      if isinstance(v, Message):
        nested = flatten(v, path + '.')
        out.update(nested if nested else {path: {}})
    if scalars:
      out[path] = scalars if len(scalars) > 1 else scalars[0]
  return out
