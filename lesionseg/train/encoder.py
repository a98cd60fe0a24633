"""SAM's image encoder for the many slices a SAM head trains on: OpenVINO, as served.

The head learns on the frozen encoder's embeddings. Training embeds every slice once per view,
hundreds to thousands of encoder passes, so it runs the encoder as the service does by default:
an ONNX export compiled by OpenVINO (bf16 where the CPU has it; ~0.3 s a slice on 2 cores
against ~1.3 s in torch fp32), and the head learns on the very embeddings it is served. The
export is made once per encoder (its weights' checksum) into the training cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lesionseg.export.onnx_sam import export_sam_onnx, sam_record
from lesionseg.models.backends.onnx_runner import RECORD_FILE
from lesionseg.models.sam import SamModules
from lesionseg.train.sam_train import encoder_key
from lesionseg.transforms import preprocess

Encoder = Callable[[Sequence[np.ndarray]], np.ndarray]
"""(H, W, 3) uint8 images -> (B, C, h, w) float32 embeddings."""


def openvino_encoder(modules: SamModules, cache: Path, *, threads: int | None = None) -> Encoder:
    """The encoder of ``modules`` in OpenVINO (exported to ``cache/encoder-<key>/`` first if
    need be), as a function of a batch of images."""
    from lesionseg.models.backends.openvino_runner import OpenVinoSamRunner

    directory = Path(cache) / f"encoder-{encoder_key(modules)}"
    if not (directory / RECORD_FILE).is_file():  # written last: a finished export
        print(f"exporting SAM's encoder for training -> {directory}")
        export_sam_onnx(modules, directory)
        record = {"sam": sam_record(modules.spec, False)}
        (directory / RECORD_FILE).write_text(json.dumps(record))
    runner = OpenVinoSamRunner(directory, threads=threads)
    spec = modules.spec

    def encode(images: Sequence[np.ndarray], batch: int = 8) -> np.ndarray:
        out = []
        for start in tqdm(range(0, len(images), batch), desc="embed", leave=False):
            chunk = images[start : start + batch]
            x = np.stack([preprocess(im, spec.image_size, spec.normalisation) for im in chunk])
            out.append(np.asarray(runner.encode(x), np.float32))
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    return encode
