"""The one object-graph walk of the package: variables of a TF2 checkpoint and of a
live model, keyed by the child-name path `tf.train.Checkpoint` saves them under.

Both walks are breadth first over child names, each object visited once, as the
Checkpoint saver orders them; so a live variable and its checkpoint entry have the
same path. Used to restore whole detectors (core/checkpoints.py) and to find a
backbone inside someone else's checkpoint (weights.py).
"""

import collections
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
VARIABLE_VALUE_ATTR = 'VARIABLE_VALUE'
Path = Tuple[str, ...]


def read_object_graph(reader) -> trackable_object_graph_pb2.TrackableObjectGraph:
  """The object graph of a `tf.train.load_checkpoint` reader (ValueError without one)."""
  if not reader.has_tensor(OBJECT_GRAPH_KEY):
    raise ValueError('not an object-based TF2 checkpoint (no object graph)')
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
  return graph


def follow(graph, names: Sequence[str], node_id: int = 0) -> Optional[int]:
  """The node reached from `node_id` through child names `names`, or None."""
  for name in names:
    children = {c.local_name: c.node_id for c in graph.nodes[node_id].children}
    if name not in children:
      return None
    node_id = children[name]
  return node_id


def checkpoint_variables(graph, root_id: int) -> Dict[Path, Tuple[str, str]]:
  """`{path from node root_id: (checkpoint key, saved full_name)}` of its variables."""
  out, seen = {}, {root_id}
  queue = collections.deque([(root_id, ())])
  while queue:
    node_id, path = queue.popleft()
    for attribute in graph.nodes[node_id].attributes:
      if attribute.name == VARIABLE_VALUE_ATTR:
        out[path] = (attribute.checkpoint_key, attribute.full_name)
    for child in graph.nodes[node_id].children:
      if child.node_id not in seen:
        seen.add(child.node_id)
        queue.append((child.node_id, path + (child.local_name,)))
  return out


def live_variables(root) -> Dict[Path, tf.Variable]:
  """`{path from root: variable}` of a trackable (model, layer, module)."""
  out, seen = {}, {id(root)}
  queue = collections.deque([(root, ())])
  while queue:
    obj, path = queue.popleft()
    if isinstance(obj, tf.Variable):
      out[path] = obj
      continue
    for name, child in tf.train.TrackableView.children(obj).items():
      if id(child) not in seen:
        seen.add(id(child))
        queue.append((child, path + (name,)))
  return out
