"""The core every front end uses (docs/design.md, "Import rule").

  * `params`: experiment <- model_dir/params.yaml <- config files <- k=v overrides;
  * `checkpoints`: resolve a model_dir / prefix, read the object graph, restore;
  * `model_dir`: what a model dir holds besides checkpoints (the category table);
  * `loading`: checkpoint -> (params, task, model, category table), written once.

Imports run one way: front ends -> {evaluation, export, analysis} -> core ->
{modeling, data, ops, configs}.
"""
