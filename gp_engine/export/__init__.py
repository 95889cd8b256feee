"""Trainer checkpoint -> deployable model directory.

- ``manifest``        model.json-style description of a built model (no torch: the runtime reads it)
- ``onnx_export``     checkpoint -> model.onnx (fp32 or fp16 with fp32 I/O), checked against torch
- ``tensorrt_build``  model.onnx -> one TensorRT engine per batch size, when ``tensorrt`` is installed

Only ``manifest`` may be imported without torch.
"""
