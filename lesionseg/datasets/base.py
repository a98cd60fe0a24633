"""The types every dataset reader yields: Frame, Volume, Case and Dataset.

Lesion instances are the 8-connected components of each class on each 2-D slice (as
:meth:`lesionseg.datasets.lits.LitsCase.slice` outlines tumours), so a lesion that touches another
of
the same class on a slice counts once there. COCO annotations are the exception: each
annotation is its own instance, as the file says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesionseg.errors import DatasetError

FORMATS = ("nnunet", "folders", "busi", "dicom", "coco")
_EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Frame:
    """One 2-D image with its lesion instances.

    Attributes:
        name: unique in the dataset, ``"<case>/a<axis>_<i:03d>"`` for a slice of a volume, the
            case's own name for a 2-D case (e.g. ``"benign/img12"``).
        image: (H, W, 3) uint8 RGB after the intensity mapping (the service's: window or min-max).
        masks: (K, H, W) bool, one per lesion instance.
        labels: (K,) int64, index into ``Dataset.classes`` of each instance.
        spacing: (row, column) mm per pixel, or None when unknown.
    """

    name: str
    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        assert self.image.ndim == 3 and self.image.shape[2] == 3, self.image.shape
        assert self.image.dtype == np.uint8, self.image.dtype
        assert self.masks.dtype == np.bool_ and self.masks.ndim == 3, self.masks.shape
        assert self.masks.shape[1:] == self.image.shape[:2], (self.masks.shape, self.image.shape)
        assert self.labels.shape == (len(self.masks),), (self.labels.shape, self.masks.shape)


def instances(class_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) class map (0 background, c + 1 = class c) -> masks (K, H, W) bool and labels (K,)
    int64: the 8-connected components of each class, by class, then in raster order."""
    masks, labels = [], []
    for c in range(int(class_map.max(initial=0))):
        components, k = ndimage.label(class_map == c + 1, structure=_EIGHT)
        masks += [components == i for i in range(1, k + 1)]
        labels += [c] * k
    shape = (len(masks), *class_map.shape)
    return np.array(masks, bool).reshape(shape), np.array(labels, np.int64)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8, the three channels equal."""
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


@dataclass(frozen=True)
class Volume:
    """A 3-D case.

    Attributes:
        image: (Z, H, W) uint8 gray after the window.
        labels: (Z, H, W) uint16 class map: 0 background, c + 1 = ``Dataset.classes[c]``.
        spacing: (z, row, column) mm, or None when unknown.

    Axis 0 is the slice axis the service uses: the axis closest to superior-inferior for
    NIfTI (:func:`lesionseg.io.nifti.slice_axis`, slice ``k`` as the service shows it), position
    along the normal for a DICOM series.
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        assert self.image.ndim == 3 and self.image.dtype == np.uint8, self.image.shape
        assert self.labels.shape == self.image.shape, (self.labels.shape, self.image.shape)
        assert self.labels.dtype == np.uint16, self.labels.dtype

    def frames(
        self, axis: int = 0, z_range: tuple[int, int] | None = None, prefix: str = ""
    ) -> Iterator[Frame]:
        """Slices along ``axis`` of the volume cropped to ``z_range`` (axis-0 indices,
        [start, stop)). Frames are named ``"<prefix>/a<axis>_<i:03d>"``, ``i`` the slice's
        index along ``axis`` in the whole volume (so axis-0 names do not change with the crop).
        Axis 1 and 2 slices are (Z, W) and (Z, H) images, rows along z."""
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        start, stop = z_range if z_range is not None else (0, self.image.shape[0])
        start, stop = max(start, 0), min(stop, self.image.shape[0])
        image, labels = self.image[start:stop], self.labels[start:stop]
        spacing = None
        if self.spacing is not None:
            spacing = tuple(s for i, s in enumerate(self.spacing) if i != axis)
        offset = start if axis == 0 else 0
        for i in range(image.shape[axis]):
            masks, ids = instances(np.take(labels, i, axis=axis))
            yield Frame(
                f"{prefix}/a{axis}_{i + offset:03d}",
                gray_to_rgb(np.take(image, i, axis=axis)),
                masks,
                ids,
                spacing,
            )


class Case:
    """One patient or study (never split across train and validation).

    Attributes:
        name: unique in the dataset, e.g. ``"liver_7"`` or ``"benign/img12"``.
        source: the file or folder the case comes from, for messages.
        files: every file the case reads (the dataset's shared files included), for
            :meth:`Dataset.fingerprint`.
        modality: DICOM Modality of its images ("CT", "MR", ...), None when unknown (2-D).

    Each call of :meth:`frames` or :meth:`volume` reads the files again (nothing is cached,
    so a large dataset never sits in memory); errors in the data raise DatasetError then.
    """

    def __init__(
        self,
        name: str,
        source: Path,
        files: Iterable[Path],
        *,
        load_volume: Callable[[], Volume] | None = None,
        load_frame: Callable[[], Frame] | None = None,
        modality: str | None = None,
    ):
        assert (load_volume is None) != (load_frame is None)
        self.name = name
        self.modality = modality
        self.source = Path(source)
        self.files = tuple(Path(f) for f in files)
        self._load_volume = load_volume
        self._load_frame = load_frame

    def __repr__(self) -> str:
        kind = "volume" if self._load_volume else "image"
        return f"Case({self.name!r}, {kind}, source={str(self.source)!r})"

    def frames(self) -> Iterator[Frame]:
        """Every 2-D frame: the axis-0 slices of a volume, or the one image of a 2-D case."""
        if self._load_frame is not None:
            yield self._load_frame()
        else:
            yield from self._load_volume().frames(prefix=self.name)

    def volume(self) -> Volume | None:
        """The 3-D case (nnU-Net, DICOM), or None for a 2-D case."""
        return None if self._load_volume is None else self._load_volume()


@dataclass(frozen=True)
class Dataset:
    """A user's labelled dataset.

    Attributes:
        root: the folder (or COCO JSON file) given.
        format: "nnunet" | "folders" | "busi" | "dicom" | "coco".
        classes: lesion class names; index = label id in ``Frame.labels``.
        cases: the cases, sorted by name.
        window: the window given (preset name or "center,width"), None = the file's or min-max.
    """

    root: Path
    format: str
    classes: tuple[str, ...]
    cases: tuple[Case, ...]
    window: str | None = None

    @property
    def modality(self) -> str | None:
        """The cases' common DICOM Modality ("CT", "MR", ...); None when unknown or mixed.
        A bundle's window applies to uploads of this modality only."""
        found = {case.modality for case in self.cases}
        return found.pop() if len(found) == 1 else None

    def fingerprint(self) -> str:
        """sha256 hex over the sorted paths (relative to the root) and contents of every file
        the cases read."""
        base = self.root if self.root.is_dir() else self.root.parent
        files = sorted({f.resolve() for case in self.cases for f in case.files})
        digest = hashlib.sha256()
        for path in files:
            try:
                name = path.relative_to(base.resolve()).as_posix()
            except ValueError:
                name = path.as_posix()
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
        return digest.hexdigest()


def select_classes(
    available: Iterable[str], labels: Iterable[str] | None, where: Path
) -> tuple[str, ...]:
    """The lesion classes: those of ``available`` named in ``labels`` (each must exist), in the
    dataset's order; all of them when ``labels`` is None."""
    available = tuple(available)
    if labels is None:
        return available
    labels = tuple(labels)
    missing = [name for name in labels if name not in available]
    if missing or not labels:
        raise DatasetError(
            f"{where}: no label named {', '.join(map(repr, missing)) or '(none given)'}; "
            f"the dataset's labels are {', '.join(map(repr, available)) or '(none)'}"
        )
    return tuple(name for name in available if name in labels)


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or DatasetError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
