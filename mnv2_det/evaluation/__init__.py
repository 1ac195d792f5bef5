"""COCO evaluation (pycocotools), separate from its command line (cli/eval.py)."""
