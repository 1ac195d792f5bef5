"""Export of trained SSDLite detectors: SavedModel (TF Serving) and TFLite (on device).

  * `saved_model.export_saved_model`: `serving_default` takes uint8 images
    `[1, None, None, 3]` of any size, resizes + normalizes inside the graph exactly
    like the eval pipeline, and returns detections in ORIGINAL image pixels with
    DATASET category ids.
  * `tflite_convert.export_tflite`: a complete detector (conv body + the
    `TFLite_Detection_PostProcess` custom op) in fp32, fp16 or full-int8 body.
  * `tflite.TFLiteDetector`: runs such a .tflite with ai-edge-litert and returns the
    SavedModel's output format.

`tools/export.py` is the command line (`mnv2_det.cli.export`).
"""
