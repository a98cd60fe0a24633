"""lesionseg: find lesions in a medical image and outline them (YOLO boxes -> SAM masks).

The library knows nothing of HTTP; the BentoML service in ``service/`` is a thin layer on top.
"""

__version__ = "0.1.0"
