"""A sam-head bundle for tests: the shipped bundle's SAM and settings with an untrained,
seeded head (its boxes are arbitrary but the same on every run and backend). It lives in
:mod:`benchmarks.untrained_head` (a floor below the tests, not the shipped library) so that
``benchmarks/detectors.py --fixture`` can write it too."""

from __future__ import annotations

from benchmarks.untrained_head import write_untrained_head_bundle as write_sam_head_bundle

__all__ = ["write_sam_head_bundle"]
