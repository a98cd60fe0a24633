"""3-D lesions and their measurements (numpy and scipy only; no file format, no model).

- :mod:`.geometry`: where each frame of a volume lies in the patient (mm), slab thicknesses;
- :mod:`.recist`: RECIST long and short axes of one 2-D mask;
- :mod:`.lesions3d`: per-frame lesions linked into 3-D lesions, with volume, axes, centroid.
"""
