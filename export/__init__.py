"""Export the SAM encoder/decoder and the YOLO detector to ONNX and TensorRT.

Importable functions with thin CLIs (``python -m export onnx``, ``python -m export tensorrt``).
Every export checks itself against PyTorch and records the result beside the files.
"""
