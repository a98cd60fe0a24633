"""A sam-head bundle for tests: the shipped bundle's SAM and settings with an untrained,
seeded head (its boxes are arbitrary but the same on every run and backend). It lives in the
library (:mod:`lesionseg.models.untrained_head`) so that ``benchmarks/detectors.py --fixture``
can write it too."""

from __future__ import annotations

from lesionseg.models.untrained_head import write_untrained_head_bundle as write_sam_head_bundle

__all__ = ["write_sam_head_bundle"]
