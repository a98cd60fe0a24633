"""Per-image results the models would compute again for the same pixels: SAM embeddings (and
the detector's rows), kept in a thread-safe LRU bounded by bytes.

The key is :func:`image_key`: a digest of the decoded ``(H, W, 3) uint8`` pixels, their shape,
and the identity of the models that turn pixels into the cached value. Decoded pixels are what
the models see, so for DICOM they already depend on the SOP instance, the frame and the window
(another window gives other pixels, hence another key), and two uploads that decode to the same
pixels (a PNG and its DICOM twin) share one embedding, rightly: the encoder reads nothing else.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np


def image_key(pixels: np.ndarray, models: str) -> str:
    """The cache key of an image for the models named by ``models``.

    Args:
        pixels: (H, W, 3) uint8 decoded pixels, as the models receive them.
        models: identity of the models and runtime (e.g. the SAM checksum and the export's
            store tag, :func:`models_identity`); another model must never share a key.

    Returns:
        A hex digest (BLAKE2b, 128 bits; ~1 ms for a 512 x 512 RGB image).
    """
    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{models}|{pixels.dtype.str}|{pixels.shape}|".encode())
    digest.update(memoryview(pixels).cast("B"))
    return digest.hexdigest()


def models_identity(models: dict) -> str:
    """A digest of a JSON-able description of the models in force (backend, store tags, SAM
    checksum, detector): changes whenever any of them does."""
    text = json.dumps(models, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class EmbeddingCache:
    """Least-recently-used arrays under a byte budget; safe to share between threads.

    Values are stored read-only (callers share them) and counted by ``nbytes``. A value larger
    than the whole budget is not stored. ``max_bytes=0`` turns the cache off: ``get`` always
    misses (and counts nothing), ``put`` stores nothing.

    Args:
        max_bytes: the budget; e.g. 256 MiB holds 64 LiteMedSAM embeddings of 4 MiB
            ((256, 64, 64) float32).
    """

    def __init__(self, max_bytes: int) -> None:
        assert max_bytes >= 0, max_bytes
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> np.ndarray | None:
        """The value stored under ``key`` (now the most recently used), or None."""
        if not self.enabled:
            return None
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        """Store ``value`` (not copied; made read-only), evicting the least recently used
        entries until the total is within the budget."""
        if value.nbytes > self.max_bytes:
            return
        value.setflags(write=False)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= evicted.nbytes
