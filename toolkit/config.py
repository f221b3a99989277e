"""One typed config in sections. Built at the edges (CLI, create_app, scripts); each part receives its own section.

A YAML file gives any subset of the sections; unknown keys are an error. Relative paths inside a YAML
file are resolved against that file's own folder, so a config works from any working directory.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from toolkit.errors import ConfigError
from toolkit.labels import REPETITIVE, REST_FOR, REST_LABEL

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which CLIP to load and how to run it."""

    # open_clip architecture ("ViT-B-32"), "hf-hub:org/repo", or a path to an open_clip model-config JSON.
    name: str = "ViT-B-32"
    # open_clip pretrained tag ("openai"), a local checkpoint (.pt/.pth/.bin/.safetensors), or null for random init.
    pretrained: Optional[str] = "openai"
    # The activation: QuickGELU (what OpenAI's weights were trained with) or GELU. auto: what the pretrained tag
    # says (open_clip's pretrained config; true for "openai"); for a local checkpoint, true only when it is an
    # official OpenAI release (sha256), else the model config's own value; folders say it themselves.
    quick_gelu: Union[Literal["auto"], bool] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # fp32: open_clip's reference numerics. bf16: weights cast to bfloat16 (embeddings within cosine 0.9999 of fp32;
    # ~1.9x the images/s of fp32 on an AVX-512 BF16 CPU). auto: bf16 on CUDA and on CPUs with native bf16
    # (AVX-512 BF16 / AMX), else fp32. See BENCHMARKS.md, "Extraction performance".
    # int8: the image tower's matrix products with int8 weights (ONNX Runtime dynamic quantization, per channel),
    # on the fast path only (engine auto/onnx, CPU); ~1.45x fp32's images/s (ViT-B-32) on the 2-core AVX2 CPU,
    # features within cosine ~0.99 of fp32, the demo's accuracies within 0.4 points; opt-in: it changes the answers.
    # Its stores are kept apart from fp32 ones (identity.quantization). BENCHMARKS.md, "Whole-process extraction".
    precision: Literal["fp32", "bf16", "fp16", "auto", "int8"] = "auto"
    # torch.compile the image tower (weights frozen, one static batch size; ~20 s of warm-up for ViT-B-32).
    # Off by default: on the 2-core CPU it measured no faster than eager bf16 (BENCHMARKS.md); try it on GPUs.
    compile: bool = False
    # Decode JPEGs at 1/2-1/8 scale when the shorter side stays >= the model's input size (PIL draft).
    draft_decode: bool = False
    batch_size: int = Field(32, ge=1, le=4096)
    # DataLoader worker processes for decoding/preprocessing; -1 picks by dataset size and CPU count.
    num_workers: int = Field(-1, ge=-1, le=64)
    # Where open_clip/HF caches downloaded weights; null uses their defaults.
    cache_dir: Optional[str] = None
    # What runs `clipkit predict` on image files. auto: ONNX Runtime on CPU in fp32 (the image and text towers
    # exported once per model into clipkit's cache, prompt embeddings cached there too; no torch import), else
    # torch. onnx: the same, and an error when the model can't take it. torch: always PyTorch (encoder/fast.py).
    engine: Literal["auto", "onnx", "torch"] = "auto"


class PromptConfig(_Section):
    """Labels and prompt templates for the zero-shot head."""

    labels: Optional[list[str]] = None  # wins over labels_file when given; neither: the exercise labels (labels.py)
    labels_file: Optional[str] = None  # one label per line; '#' starts a comment
    templates: str = "people"  # none | people | openai_imagenet | path to a file with one '{}' template per line
    # multi-label zero-shot: a file of 'class | negative prompt' lines ('* | text': every class not named);
    # None: every class against "something else" (heads/prompts.py load_negatives)
    negatives_file: Optional[str] = None
    # A zero-shot head built from labels (no images to choose a detector on) rejects "unfamiliar" images by MCM
    # (max softmax of cosines, T = 1) under a threshold from the model's text-to-text scores of the negative
    # words (toolkit/heads/openset.py); off: no out-of-set rejection.
    unfamiliar: Literal["mcm", "off"] = "mcm"


class ProbeConfig(_Section):
    """Linear-probe training on cached features."""

    # logreg | linear: one linear head; cache: Tip-Adapter over zero-shot; blend: WiSE-FT of zero-shot and a probe;
    # auto: every candidate fitted, the best on val (k-fold when val is small) kept, zero-shot included
    method: Literal["logreg", "linear", "cache", "blend", "auto"] = "logreg"
    seed: int = 0
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    fewshot: Optional[int] = Field(None, ge=1)
    # multi-label (data/multilabel.py): None = recognised from the file (JSON Lines, or a CSV `labels` column);
    # the heads get per-class calibration (none | temperature | platt) and per-class thresholds chosen on val
    multi_label: Optional[bool] = None
    class_calibration: Literal["none", "temperature", "platt"] = "platt"
    per_class_c: bool = False  # multi-label logreg: one C per class (False: one shared C, better on the demo suite)
    init: Literal["random", "zeroshot"] = "random"
    # logreg: log-spaced C sweep on val, then refined around the best, as in the CLIP paper.
    c_min: float = 1e-6
    c_max: float = 1e6
    c_steps: int = Field(13, ge=2)
    c_grid: Optional[list[float]] = None  # explicit C values instead of c_min..c_max (one value: no sweep)
    max_iter: int = 1000
    # linear (Lightning): AdamW with a weight-decay sweep and early stopping on val.
    # Features are unit-norm, so useful logits need large weights: start high; it is cut when val loss stalls.
    lr: float = 0.1
    weight_decays: list[float] = [0.0, 1e-4, 1e-3, 1e-2, 1e-1]
    max_epochs: int = 200
    patience: int = 10
    batch_size: int = 256
    # cache (Tip-Adapter): alpha weighs the cache against the zero-shot logits, beta sharpens key affinities;
    # both picked on val from these grids (alpha 0 = zero-shot; Tip-Adapter searches ~0.1-10 over a strong CLIP
    # zero-shot, the larger values let the cache outvote a weak one). finetune: train the keys (Tip-Adapter-F) with
    # AdamW at cache_lr for up to cache_epochs (early stopping on val after `patience` epochs), then search again.
    finetune: bool = False
    cache_alphas: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        [0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 35.0, 60.0, 100.0, 200.0], min_length=1)
    cache_betas: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field([0.5, 1.0, 2.0, 3.5, 5.5, 8.0, 12.0, 20.0], min_length=1)
    cache_lr: float = Field(1e-3, gt=0)
    cache_epochs: int = Field(100, ge=1)
    # blend (WiSE-FT for linear heads): (1 - alpha) * zero-shot + alpha * probe logits, alpha picked on val
    blend_alphas: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], min_length=1)
    blend_base: Literal["logreg", "linear"] = "logreg"  # the probe blended in (linear: zero-shot init)
    # auto: the candidates (zeroshot, logreg, linear = zero-shot init, cache, cache-f = fine-tuned, blend); with
    # fewer than auto_min_val_per_class val images in some class, chosen by auto_folds-fold CV over train + val
    auto_candidates: list[Literal["zeroshot", "logreg", "linear", "cache", "cache-f", "blend"]] = \
        ["zeroshot", "logreg", "linear", "cache", "cache-f", "blend"]
    auto_min_val_per_class: int = Field(5, ge=1)
    auto_folds: int = Field(5, ge=2)
    # "None of these": every head gets a temperature fitted on val (calibration.py); then at most one rule
    # rejects predictions whose calibrated top probability is low. target_precision: the lowest threshold whose
    # accepted val predictions are at least this accurate; target_coverage: the highest threshold that still
    # accepts this share of val; reject_below: the threshold itself (0..1). None of them: no rejection.
    target_precision: Optional[float] = Field(None, gt=0, le=1)
    target_coverage: Optional[float] = Field(None, gt=0, le=1)
    reject_below: Optional[float] = Field(None, ge=0, le=1)
    # "Unfamiliar" (out-of-set) rejection: a detector (kNN or kNN + Mahalanobis; Mahalanobis, energy, MCM, NegLabel
    # are scored too; fitting/openset.py) chosen by holding each known class out in turn, its threshold keeping
    # this share of known val. None: none.
    keep_known: Optional[float] = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _one_rejection_rule(self) -> "ProbeConfig":
        given = [k for k in ("target_precision", "target_coverage", "reject_below") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are both set; give at most one rejection rule")
        return self


class TrackingConfig(_Section):
    """MLflow tracking."""

    enabled: bool = True
    uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI (read by the CLI), else sqlite:///mlflow.db
    experiment: Optional[str] = None  # null: a default derived from the dataset name
    artifact_location: str = "./mlartifacts"
    # A probe run registers its head as an MLflow model, so `--head models:/NAME/VERSION` works.
    register_head: bool = True
    registered_model: Optional[str] = None  # null: '<experiment>-head'


class ServeConfig(_Section):
    """The HTTP service."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    mode: Literal["zeroshot", "probe"] = "zeroshot"
    head: Optional[str] = None
    api_key: Optional[str] = None
    max_batch_size: int = Field(32, ge=1)
    # how long a batch waits for more images; only while another request in flight could still join it
    max_wait_ms: float = Field(5.0, ge=0)
    micro_batching: bool = True
    queue_size: int = Field(256, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    video_timeout_s: float = Field(600.0, gt=0)  # deadline of one /v1/predict/video request (decode + model)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    max_files: int = Field(32, ge=1)
    max_labels: int = Field(100, ge=1)
    max_video_bytes: int = Field(100 * 1024 * 1024, ge=1)
    max_video_seconds: float = Field(600.0, gt=0)
    max_video_frames: int = Field(5000, ge=1)
    # decoded frames x pixels per frame for one video (every decoded frame costs, sampled or not):
    # 4e10 is ~10 minutes of 1080p at 30 fps
    max_video_work: float = Field(4e10, gt=0, allow_inf_nan=False)
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1)  # whole request body, refused (413) while streaming
    max_label_chars: int = Field(200, ge=1)  # per label in a request
    retry_after_s: int = Field(1, ge=0)  # the Retry-After header sent with 503
    shutdown_grace_s: float = Field(30.0, ge=0)  # after SIGTERM: longest wait for in-flight requests
    # Slow clients (answer 408 and close): a request's headers must be complete this long after the connection
    # opened or the previous response ended; a body may pause at most body_timeout_s and take
    # body_total_timeout_s in all (a 100 MB video at ~350 KB/s); an idle keep-alive connection closes after
    # keep_alive_s.
    header_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False)
    body_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False)
    body_total_timeout_s: float = Field(300.0, gt=0, allow_inf_nan=False)
    keep_alive_s: float = Field(5.0, gt=0, allow_inf_nan=False)
    # Text encoding of request label sets not encoded yet (cached per label set, LRU): this many encoded at
    # once, and at most text_queue_labels labels, or text_queue_s seconds at the measured rate (null: half of
    # request_timeout_s), of such sets waiting or being encoded; beyond, 503 + Retry-After. Label sets already
    # encoded (and the default one) never wait for them.
    text_concurrency: int = Field(1, ge=1)
    text_queue_labels: int = Field(1000, ge=1)
    text_queue_s: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    # Image decoding, per request: JPEG scans per image (a normal progressive JPEG has ~10), decode work
    # (pixels x scans, summed over the request's images) and decode seconds (stopped at the next chunk read).
    max_jpeg_scans: int = Field(100, ge=1)
    max_decode_work: float = Field(2e9, gt=0, allow_inf_nan=False)
    decode_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False)
    # longer side / shorter side; with the model's input size it bounds the image after resizing
    max_aspect_ratio: float = Field(100.0, ge=1, allow_inf_nan=False)
    # Host header names accepted (DNS rebinding); empty: loopback names, the bound host, and IP literals
    # when bound to all interfaces; "*" accepts any. Browser requests from other origins are refused (403)
    # unless listed in cors_origins ("http://app.example:8080"; "*" allows any).
    allowed_hosts: list[str] = []
    cors_origins: list[str] = []


class VideoConfig(_Section):
    """Frame sampling, smoothing, segments and repetition counting."""

    # Sample this many frames per second (sources at a lower rate give every frame); null: every `stride`-th
    # frame. 10 keeps the windows below the same length in seconds whatever the source's rate (window 5 =
    # 0.5 s), scores a 30 fps video 3x faster than every frame, and still sees the rest phase of a fast rep.
    # At most 240 (video.MAX_FPS); a finite number, so no value can make the sampling loop spin.
    fps: Optional[float] = Field(10.0, gt=0, le=240, allow_inf_nan=False)
    stride: int = Field(1, ge=1, le=1_000_000)
    window: int = Field(5, ge=1)  # centered moving average, in sampled frames
    # "None of these": frames whose confidence (each frame's top calibrated probability, averaged over `window`)
    # is below this are rejected (label null, their own segments, no reps). null: the head's own threshold
    # (heads saved with --target-precision ...); 0: reject nothing.
    reject_below: Optional[float] = Field(None, ge=0, le=1)
    unknown_label: str = Field("none of these", min_length=1, max_length=200)  # shown for rejected frames
    min_segment_s: float = Field(0.0, ge=0)
    rest_label: Optional[str] = REST_LABEL
    repetitive: list[str] = list(REPETITIVE)
    # per-exercise rest pose where it isn't rest_label (a push-up rests in a high plank, not standing)
    rest_for: dict[str, str] = dict(REST_FOR)
    # a run of an exercise's rest label shorter than this between two runs of the exercise is the top of a
    # rep, not a pause: it joins the exercise's segment (seconds; 0 turns it off). The top of a rep looks
    # like the rest pose for ~40-50% of the rep, so 1.5 s covers reps of up to ~3 s.
    rest_gap_s: float = Field(1.5, ge=0)
    # Reps are counted on a lighter smoothing than the labels: at 10 fps the rest phase of a fast rep lasts
    # 2-3 frames, which a 5-frame window fills in (on the demo videos window 5 missed 3 of 8 fast jumping
    # jacks; windows 2-3 counted every video exactly, window 1 let single-frame confusions through).
    rep_window: int = Field(3, ge=1)
    # hysteresis on that series: a rep counts when the exercise's probability reaches rep_high after having
    # dropped to rep_low since the last rep (0.4/0.6 is the middle of the range that counted exactly)
    rep_high: float = Field(0.6, gt=0, le=1)
    rep_low: float = Field(0.4, ge=0, lt=1)


class Config(_Section):
    model: ModelConfig = ModelConfig()
    prompts: PromptConfig = PromptConfig()
    probe: ProbeConfig = ProbeConfig()
    tracking: TrackingConfig = TrackingConfig()
    serve: ServeConfig = ServeConfig()
    video: VideoConfig = VideoConfig()


# Fields holding filesystem paths, resolved against the YAML file's folder.
_PATH_FIELDS = {("model", "name"), ("model", "pretrained"), ("prompts", "labels_file"), ("prompts", "templates"),
                ("serve", "head"), ("model", "cache_dir")}


def _resolve_relative(data: dict[str, Any], base: Path) -> None:
    """Rewrite relative paths in `data` that exist relative to `base` (names like 'ViT-B-32' are left alone)."""
    for section, key in _PATH_FIELDS:
        value = (data.get(section) or {}).get(key)
        if not isinstance(value, str) or not value or Path(value).is_absolute() or ":" in value:
            continue
        candidate = base / value
        if candidate.exists() or key == "cache_dir":
            data[section][key] = str(candidate.resolve())


def _format_validation(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        section = first["loc"][0] if len(first["loc"]) > 1 else None
        known = list((Config.model_fields[section].annotation.model_fields if section in Config.model_fields
                      else Config.model_fields).keys())
        guess = difflib.get_close_matches(str(first["loc"][-1]), known, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else f"; known keys: {', '.join(known)}"
        return f"unknown config key '{where}' in {source}{hint}"
    return f"invalid config value for '{where}' in {source}: {first['msg']} (got {first.get('input')!r})"


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set data['a']['b'] = value for dotted='a.b'."""
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def load_config(path: Optional[str | Path] = None, overrides: Optional[dict[str, Any]] = None) -> Config:
    """Load a YAML config (or defaults when `path` is None) and apply dotted overrides whose value is not None.

    >>> load_config(None, {"model.name": "RN50", "model.batch_size": None}).model.batch_size
    32
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' not found; pass an existing YAML file, e.g. configs/default.yaml")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML ({e.__class__.__name__}); fix its syntax") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must be a mapping of sections (model:, prompts:, ...)")
        _resolve_relative(data, p.parent)
        source = str(path)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, source)) from None


def config_to_yaml(cfg: Config) -> str:
    """The full config as YAML, for logging next to a run."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
