"""The card's export scripts: ``python -m export onnx`` and ``python -m export tensorrt``.

The work is in the library (:mod:`lesionseg.export`); these scripts import it and never the service.
Every export checks itself against PyTorch and records the result beside the files.
"""
