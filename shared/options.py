"""The options of ``cnclip train`` and ``cnclip predict``: the one place each is defined.

Every option is a field of a model here, with its name, type, default, bounds and help; rules
that span fields are validators here. Three things are built from these models and nothing
else (a test checks they agree):

- the command line (``services/trainer/commands/options_cli.py`` turns fields into argparse
  options: ``train_data`` -> ``--train-data``; a bool that defaults to False is a flag, one that
  defaults to True takes ``on|off``),
- the job specs (``shared/jobspec.py``: service fields + these options, paths relative to the
  data root),
- the trainer's run settings (``TrainConfig`` / prediction ``RunSettings``: these options plus
  where the run writes).

Torch-free: the API checks a spec against these rules before anything is queued.
"""
from __future__ import annotations

import math
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

OnlineMode = Literal["off", "live", "cache"]
OnlineSchedule = Literal["training", "validation"]  # when a training run takes its online steps
Precision = Literal["amp", "bf16", "fp16", "fp32"]
Device = Literal["auto", "cpu", "cuda"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]
PredictMode = Literal["single", "ensemble", "ensemble-last"]
LossKind = Literal["clip", "dsl"]
ScoresDtype = Literal["float16", "float32"]
ReportTo = Literal["none", "tensorboard"]  # experiment loggers a training run also writes to

DEFAULT_MAX_EPOCHS = 32  # Chinese-CLIP's default when neither length is given
# Online steps per training step (online_step_ratio's default; docs/architecture.md says why).
ONLINE_STEP_RATIO = 0.25
# What `auto` means for the levers whose best value differs between training and test time, as
# the efficacy grid measured them (docs/architecture.md, "Online learning: what pays"). Active
# crawling (services/trainer/online/active.py): in training half the queries gained as much as
# all of them; at test time every query gained more. Replay: at test time two offline pairs per
# crawled pair kept every seen concept (none lost MR) for the same unseen gain; in training one.
ONLINE_CRAWL_SHARE_TRAINING = 0.5
ONLINE_CRAWL_SHARE_TEST_TIME = None
ONLINE_REPLAY_TRAINING = 1.0
ONLINE_REPLAY_TEST_TIME = 2.0

# ---- model names ---------------------------------------------------------------------------
# The towers this build has configurations for (services/trainer/model/configs.py holds their
# sizes and checks it covers exactly these names).
VISION_MODELS: tuple[str, ...] = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "tiny")
TEXT_MODELS: tuple[str, ...] = ("RoBERTa-wwm-ext-base-chinese", "RoBERTa-wwm-ext-large-chinese",
                                "RBT3-chinese", "tiny")
TEXT_MODEL_ALIASES = {"RBT3": "RBT3-chinese"}  # other spellings users of Chinese-CLIP write


class UnknownModelError(ValueError):
    """A model name that has no configuration here."""


def canonical_vision_model(name: str) -> str:
    if name not in VISION_MODELS:
        raise UnknownModelError(f"unknown vision model {name!r}; choose one of {', '.join(VISION_MODELS)}")
    return name


def canonical_text_model(name: str) -> str:
    name = TEXT_MODEL_ALIASES.get(name, name)
    if name not in TEXT_MODELS:
        raise UnknownModelError(f"unknown text model {name!r}; choose one of {', '.join(TEXT_MODELS)}")
    return name


VisionModel = Annotated[str, Field(max_length=64), AfterValidator(canonical_vision_model)]
TextModel = Annotated[str, Field(max_length=64), AfterValidator(canonical_text_model)]


# ---- value types -----------------------------------------------------------------------------
def _interval(value: Any) -> Any:
    """-1, 0, 'none' or null switch an interval off (stored as None); the prototype writes -1."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("none", "null", "-1", "0"):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value in (-1, 0):
        return None
    return value


Interval = Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_interval)]


def _none_word(value: Any) -> Any:
    """'none' or 'null' (how a command line says "unset") is None."""
    if isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    return value

# Paths are plain strings here: on the command line they are taken as given, in a job spec they
# are relative to the data root (shared/jobspec.py checks and resolves every field marked so).
INPUT = {"path": "input"}  # must exist before the run starts
OUTPUT = {"path": "output"}  # written by the run


def _path_text(value: Any) -> Any:
    return str(value) if isinstance(value, PurePath) else value


PathText = Annotated[str, BeforeValidator(_path_text), Field(min_length=1, max_length=4096)]


def path_kind(field_info) -> str | None:
    extra = field_info.json_schema_extra
    return extra.get("path") if isinstance(extra, dict) else None


def refuse(model: BaseModel, field: str, message: str) -> ValidationError:
    """A validation error of a rule that spans fields, located at the field a user must change
    (a model validator's ValueError would name no field)."""
    return ValidationError.from_exception_data(type(model).__name__, [InitErrorDetails(
        type=PydanticCustomError("option_rule", message), loc=(field,), input=getattr(model, field, None))])


class _Options(BaseModel):
    # Non-finite numbers (NaN, inf, 1e400) are refused everywhere: no option means them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=False)


class ModelOptions(_Options):
    vision_model: VisionModel = Field("ViT-B-16", description="image tower")
    text_model: TextModel = Field("RoBERTa-wwm-ext-base-chinese", description="text tower")
    context_length: int = Field(52, ge=8, le=512, description="text length in tokens, [CLS] and [SEP] included")
    precision: Precision = Field(
        "amp", description="amp: fp32 weights, fp16 autocast with loss scaling on CUDA (plain fp32 on the CPU); "
                           "bf16: fp32 weights, bf16 autocast; fp16: fp16 weights (as Chinese-CLIP); fp32")
    attn_implementation: AttnImplementation | None = Field(
        None, description="default: FlashAttention-2 when installed (and not fp32), else SDPA")
    device: Device = Field("auto", description="auto: CUDA when available")


class OptimOptions(_Options):
    """How a training step updates the model: the main loop's and the online steps'."""

    lr: float = Field(5e-5, gt=0, le=10, description="learning rate (peak of the schedule in training)")
    wd: float = Field(0.001, ge=0, le=10, description="weight decay (not on biases, norms, logit scale)")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.98, ge=0, lt=1, description="AdamW beta2")
    eps: float = Field(1e-6, gt=0, le=1, description="AdamW epsilon")
    loss: LossKind = Field("clip", description="clip or the prototype's dual softmax (dsl)")
    dsl_temperature: float = Field(1000.0, gt=0, le=1e6, description="temperature of the dual-softmax prior")
    seed: int = Field(123, ge=0, le=2**31 - 1, description="random seed")


class OnlineOptions(_Options):
    online: OnlineMode = Field(
        "off", description="learn from crawled images of each evaluation batch's queries: live (crawler pool "
                           "over Redis, written through to the cache), cache (the cache only), off")
    online_images: int = Field(5, ge=1, le=20, description="images crawled per query (K)")
    online_wait_s: float = Field(60.0, ge=0, le=86400,
                                 description="longest wait for a batch's crawl results before it goes on without them")
    online_window: int = Field(256, ge=1, le=100000, description="crawl requests in flight ahead of use, per rank")
    online_login_timeout_s: float = Field(
        1800.0, ge=0, le=7 * 86400, description="live: how long to wait for a crawler rank to log in before failing")
    online_dedupe_gallery: bool = Field(
        True, description="drop crawled images that are near-duplicates of the gallery being scored")
    online_lr: float | None = Field(
        None, gt=0, le=10,
        description="learning rate of the online steps (default: training: the mean of the schedule's rates over "
                    "the training steps that earned them (with online_step_ratio none: the schedule's current rate, "
                    "which decays to zero by the last validation); test time: --lr)")
    online_cache_dir: PathText | None = Field(
        None, json_schema_extra=OUTPUT,
        description="crawled-image cache (default: the data root's online_cache/)")
    # The levers that make online learning pay on every data set (docs/architecture.md, "Online
    # learning: what pays", holds the benchmark rows behind each default). The prototype's
    # behaviour: online_schedule validation, online_step_ratio none, online_batch_steps 1, online_cycle_images off,
    # online_keep_images none, online_replay 0, online_interpolate 1.
    online_step_ratio: Annotated[float | None, BeforeValidator(_none_word)] = Field(
        ONLINE_STEP_RATIO, ge=0, le=100,
        description="training: online steps per training step since the last validation pass, spread over "
                    "the pass's batches, so how much is learnt online does not depend on how often validation "
                    "runs; none: one step per validation batch (the prototype)")
    online_schedule: OnlineSchedule = Field(
        "training",
        description="training: when the online steps are taken: training (each as soon as training steps have "
                    "earned it, between them, on the next validation queries whose crawled images are in the "
                    "cache, crawled from the job's start; validation passes then only measure), or validation "
                    "(at each validation pass's batches, before each is embedded: the prototype)")
    online_batch_steps: int = Field(
        5, ge=1, le=100,
        description="test time: online steps per test batch in each pass (each on the next kept picture of every "
                    "query); 1: the prototype")
    online_cycle_images: bool = Field(
        True, description="each use of a query learns from its next kept crawled image; off: the first image "
                          "in training, image pass mod K at test time (the prototype)")
    online_keep_images: Annotated[int | None, BeforeValidator(_none_word)] = Field(
        3, ge=1, le=20,
        description="keep the N crawled images of a query that agree most with its other images (image "
                    "embeddings), dropping outliers such as wrong items; none: keep every image")
    online_agreement_neighbours: Annotated[int | None, BeforeValidator(_none_word)] = Field(
        None, ge=1, le=19,
        description="how online_keep_images measures an image's agreement: its mean similarity to its N most "
                    "similar other images of the query (the densest group wins, even when wrong items are "
                    "half of them; 2 with online_images 8 suits a noisy shop); none: to all its other images")
    online_replay: Annotated[float, Field(ge=0, le=16)] | Literal["auto"] = Field(
        "auto",
        description="offline pairs mixed into each online step per crawled pair, so the model keeps what it "
                    "knew (training: from train_data; test time: from online_replay_data); 0: none; auto: "
                    f"{ONLINE_REPLAY_TRAINING:g} in training, {ONLINE_REPLAY_TEST_TIME:g} at test time")
    online_replay_data: PathText | None = Field(
        None, json_schema_extra=INPUT,
        description="test time: LMDB split of offline pairs to replay (e.g. the training split); none: no replay")
    online_crawl_share: Annotated[Annotated[float, Field(gt=0, le=1)] | Literal["auto"] | None,
                                  BeforeValidator(_none_word)] = Field(
        "auto",
        description="live: ask the crawler for at most this share of a split's queries, those whose words are "
                    "rarest in the training texts first (online_replay_data at test time); queries already "
                    "in the cache are always used; none: crawl every query; auto: "
                    f"{ONLINE_CRAWL_SHARE_TRAINING:g} in training, every query at test time")
    online_interpolate: float = Field(
        1.0, gt=0, le=1,
        description="test time: keep this share of the change adaptation made to the weights (w0 + a (w - w0), "
                    "as WiSE-FT); 1: the adapted weights as they are")


def replay_ratio(setting: float | str, *, test_time: bool) -> float:
    """Offline pairs replayed per crawled pair in an online step."""
    if setting == "auto":
        return ONLINE_REPLAY_TEST_TIME if test_time else ONLINE_REPLAY_TRAINING
    return float(setting)


def crawl_share(setting: float | str | None, *, test_time: bool) -> float | None:
    """The share of a split's queries a live run asks the crawler for (None: every query)."""
    if setting == "auto":
        return ONLINE_CRAWL_SHARE_TEST_TIME if test_time else ONLINE_CRAWL_SHARE_TRAINING
    return None if setting is None else float(setting)


LEGACY_ONLINE_FLAGS = ("--online-learning", "--online-cache")


def online_from_legacy(online: str | None, learning: bool, cache: bool) -> str | None:
    """The online mode that the prototype's ``--online-learning [--online-cache]`` spell, merged
    with ``--online``; ValueError when they contradict each other."""
    legacy = None
    if learning:
        legacy = "cache" if cache else "live"
    elif cache:
        raise ValueError("--online-cache needs --online-learning (or use --online cache)")
    if online is not None and legacy is not None and online != legacy:
        spelled = "--online-learning" + (" --online-cache" if cache else "")
        raise ValueError(f"--online {online} contradicts {spelled}")
    return online or legacy


class TrainOptions(ModelOptions, OptimOptions, OnlineOptions):
    """Everything a user chooses about a training run (names follow the prototype's params.py)."""

    train_data: PathText = Field(..., json_schema_extra=INPUT, description="LMDB dir of the training split (.../lmdb/train)")
    val_data: PathText | None = Field(None, json_schema_extra=INPUT,
                                 description="LMDB dir of the validation split; none disables validation")
    num_workers: int = Field(4, ge=0, le=64, description="DataLoader workers for training")
    valid_num_workers: int = Field(1, ge=0, le=64, description="DataLoader workers for validation")
    use_augment: bool = Field(False, description="AutoAugment and random erasing on training images")
    log_interval: int = Field(10, ge=1, description="steps between progress logs/events")
    report_training_batch_acc: bool = Field(
        False, description="report image->text and text->image accuracy of training batches")
    save_step_frequency: Interval = Field(None, description="save a checkpoint every N steps (-1: never)")
    save_epoch_frequency: int = Field(1, ge=1, description="save a checkpoint every N epochs")
    batch_size: int = Field(128, ge=1, le=65536, description="training batch size per rank")
    valid_batch_size: int = Field(128, ge=1, le=65536, description="validation batch size per rank")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps to train for")
    max_epochs: int | None = Field(
        None, ge=1, description=f"epochs to train for (default {DEFAULT_MAX_EPOCHS} when max_steps is not given)")
    valid_step_interval: Interval = Field(None, description="validate every N steps (default: never)")
    valid_epoch_interval: Interval = Field(1, description="validate every N epochs (-1: never)")
    warmup: int = Field(100, ge=0, description="linear warmup steps before the cosine decay")
    accum_freq: int = Field(1, ge=1, le=1024,
                            description="batches per optimizer step (features of the others are cached as negatives)")
    freeze_vision: bool = Field(False, description="keep the image tower fixed")
    grad_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    resume: PathText | None = Field(
        None, json_schema_extra=INPUT,
        description="checkpoint to start from (Chinese-CLIP .pt or a transformers dir); "
                    "default: this run's checkpoints/epoch_latest.pt if it exists")
    reset_data_offset: bool = Field(
        False, description="start at the first batch of epoch 0 instead of where the checkpoint stopped")
    reset_optimizer: bool = Field(False, description="do not restore the optimizer state")
    report_to: ReportTo = Field(
        "none", description="also write the run's figures and options for TensorBoard under "
                            "experiments/<name>/tensorboard/ (rank 0), as open_clip's --report-to")

    @model_validator(mode="after")
    def _rules(self) -> "TrainOptions":
        if self.max_steps is not None and self.max_epochs is not None:
            raise refuse(self, "max_epochs", "give max_steps or max_epochs, not both")
        if self.max_steps is None and self.max_epochs is None:
            self.max_epochs = DEFAULT_MAX_EPOCHS
        if self.valid_step_interval is not None and self.val_data is None:
            raise refuse(self, "valid_step_interval", "valid_step_interval needs val_data")
        if self.online != "off" and self.val_data is None:
            raise refuse(self, "online", f"online {self.online!r} learns during validation and needs val_data")
        if self.online != "off" and self.online_schedule == "training" and self.online_step_ratio is None:
            raise refuse(self, "online_schedule",
                         "online_step_ratio none takes one online step per validation batch (the prototype), "
                         "which needs online_schedule validation; give a ratio to learn during training")
        return self


def check_member_weights(model: BaseModel) -> None:
    """An ensemble's weights (prediction and index alike): one per member, finite, non-negative
    and not all zero (services/trainer/predict/ensemble.normalise_weights scales them to sum 1)."""
    weights, members = model.weights, model.members
    if weights is None:
        return
    if members and len(weights) != len(members):
        raise refuse(model, "weights", f"{len(members)} members but {len(weights)} weights")
    if any(w < 0 or not math.isfinite(w) for w in weights) or not any(w > 0 for w in weights):
        raise refuse(model, "weights", "weights must be finite, non-negative and not all zero")


class PredictOptions(ModelOptions, OptimOptions, OnlineOptions):
    """Everything a user chooses about a prediction (the prototype's predict.sh modes):
    ``single`` (one checkpoint, optionally adapted to the test queries online first),
    ``ensemble`` (member checkpoints with weights, each optionally adapted online) and
    ``ensemble-last`` (fuse the score matrices saved by an earlier ensemble; no model)."""

    mode: PredictMode = Field("single", description="single, ensemble or ensemble-last")
    image_data: PathText | None = Field(None, json_schema_extra=INPUT,
                                   description="LMDB split dir of the gallery (.../lmdb/test)")
    text_data: PathText | None = Field(None, json_schema_extra=INPUT, description="queries jsonl (.../test_texts.jsonl)")
    resume: PathText | None = Field(None, json_schema_extra=INPUT,
                               description="checkpoint (.pt or transformers dir) for mode single")
    members: list[PathText] = Field(default_factory=list, max_length=64, json_schema_extra=INPUT,
                               description="ensemble checkpoints; with ensemble-last: saved .npy score matrices")
    weights: list[float] | None = Field(None, max_length=64,
                                        description="one weight per member (default: equal, or the last ensemble's)")
    score_dir: PathText | None = Field(None, json_schema_extra=OUTPUT,
                                  description="member score matrices, reused on re-run (default: the data root's npy_save/)")
    fit_weights_on: PathText | None = Field(None, json_schema_extra=INPUT,
                                       description="fit the ensemble weights for mean recall on these validation texts")
    fit_images: PathText | None = Field(None, json_schema_extra=INPUT,
                                   description="LMDB split dir of the validation gallery (with fit_weights_on)")
    output: PathText | None = Field(None, json_schema_extra=OUTPUT,
                               description="predictions jsonl (default: experiments/results/test_predictions[_ensemble].jsonl)")
    top_k: int = Field(10, ge=1, le=1000, description="images ranked per query")
    save_scores: bool = Field(False, description="single mode: also keep the score matrix under score_dir")
    scores_dtype: ScoresDtype = Field("float16", description="dtype of saved score matrices")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader workers for images")
    img_batch_size: int = Field(64, ge=1, le=65536, description="images per encoding batch")
    text_batch_size: int = Field(64, ge=1, le=65536,
                                 description="queries per encoding batch and per test-time online step")
    query_chunk: int = Field(1024, ge=1, le=1 << 20, description="queries per scoring block")
    gallery_chunk: int = Field(8192, ge=1, le=1 << 24, description="images per scoring block")
    online_max_epochs: int = Field(1, ge=1, le=1000,
                                   description="test-time online passes over the test queries (online live|cache)")
    save_index: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="mode single: also keep the gallery embeddings as the exact index experiments/<name>/index "
                    "(searchable by that name; with online learning, of the adapted model)")

    @model_validator(mode="after")
    def _rules(self) -> "PredictOptions":
        mode = self.mode
        if mode != "ensemble-last":
            for name in ("image_data", "text_data"):
                if getattr(self, name) is None:
                    raise refuse(self, name, f"mode {mode!r} needs {name}")
        if mode == "single":
            if self.resume is None:
                raise refuse(self, "resume", "mode 'single' needs a checkpoint (resume)")
            for name in ("members", "weights", "fit_weights_on"):
                if getattr(self, name):
                    raise refuse(self, name, "members, weights and fit_weights_on belong to mode 'ensemble'")
        else:
            if self.resume is not None:
                raise refuse(self, "resume", f"mode {mode!r} takes its checkpoints from members, not resume")
        if self.save_index is not None and mode != "single":
            raise refuse(self, "save_index", "save_index keeps a single model's gallery embeddings (mode 'single')")
        if mode == "ensemble" and len(self.members) < 2:
            raise refuse(self, "members", "mode 'ensemble' needs at least two member checkpoints")
        check_member_weights(self)
        if (self.fit_weights_on is None) != (self.fit_images is None):
            raise refuse(self, "fit_images", "fit_weights_on and fit_images go together")
        if self.fit_weights_on is not None:
            if mode != "ensemble":
                raise refuse(self, "fit_weights_on", "weights are fitted in mode 'ensemble' (cnclip ensemble fits saved matrices)")
            if self.weights is not None:
                raise refuse(self, "fit_weights_on", "give either weights or fit_weights_on, not both")
        if self.online != "off" and mode == "ensemble-last":
            raise refuse(self, "online", "mode 'ensemble-last' loads no model, so it cannot learn online")
        return self


class TrainRunOptions(_Options):
    """Where a training run writes and how it reports: chosen by whoever launches it (the
    command line, or the job runner), not part of a job spec."""

    logs: PathText | None = Field(None, description="where runs are stored (default: the data root's experiments/)")
    name: str = Field("train_clip", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="this run's folder under logs")
    events: PathText | None = Field(None, description="write progress events as JSON lines to this file (rank 0)")
    job_id: str | None = Field(None, description="the job this run belongs to (set by the job runner)")
    no_progress: bool = Field(False, description="no progress bar even on a terminal")
    trace_batches: PathText | None = Field(
        None, description="append the text ids of every training batch to PATH.rank<R>.jsonl (data-order audit)")


class PredictRunOptions(_Options):
    events: PathText | None = Field(None, description="write progress events as JSON lines to this file")
    job_id: str | None = Field(None, description="the job this run belongs to (set by the job runner)")
    no_progress: bool = Field(False, description="no progress bar even on a terminal")
    experiments: PathText | None = Field(
        None, description="where test-time adapted checkpoints go (default: the data root's experiments/)")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                             description="folder under experiments for test-time adapted checkpoints "
                                         "(default: the job id, else 'online')")


# ---- gallery index -------------------------------------------------------------------------
IndexKind = Literal["flat", "ivf", "hnsw"]
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class IndexOptions(ModelOptions):
    """What ``cnclip index`` embeds and how it searches: a gallery LMDB encoded by one
    checkpoint (``resume``), or by an ensemble's member checkpoints with their weights (as
    ``cnclip predict --mode ensemble``), kept as float16 embeddings beside a FAISS index.
    ``flat`` is exact inner product; ``ivf`` and ``hnsw`` trade a little recall (measured
    against exact and reported) for speed on large galleries."""

    image_data: PathText = Field(..., json_schema_extra=INPUT,
                                 description="LMDB split dir of the gallery (.../lmdb/test)")
    resume: PathText | None = Field(None, json_schema_extra=INPUT,
                                    description="checkpoint (.pt or transformers dir) that embeds the gallery")
    members: list[PathText] = Field(default_factory=list, max_length=64, json_schema_extra=INPUT,
                                    description="instead of resume: an ensemble's checkpoints (two or more; same "
                                                "model options), searched by their fused scores")
    weights: list[float] | None = Field(None, max_length=64,
                                        description="one weight per member (default: equal)")
    index_kind: IndexKind = Field("flat", description="flat (exact inner product), ivf or hnsw")
    ivf_lists: int | None = Field(None, ge=1, le=1 << 20,
                                  description="ivf: clusters (default: about 4 x sqrt(images))")
    ivf_probe: int | None = Field(None, ge=1, le=1 << 20,
                                  description="ivf: clusters searched per query (default: lists / 8, at least 8)")
    hnsw_m: int = Field(32, ge=4, le=128, description="hnsw: links per node")
    hnsw_ef_search: int = Field(128, ge=8, le=4096, description="hnsw: candidates kept while searching")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader workers for images")
    img_batch_size: int = Field(64, ge=1, le=65536, description="images per encoding batch")

    @model_validator(mode="after")
    def _rules(self) -> "IndexOptions":
        if (self.resume is None) == (not self.members):
            raise refuse(self, "resume" if self.resume is None else "members",
                         "give either a checkpoint (resume) or an ensemble's members, not both")
        if self.members and len(self.members) < 2:
            raise refuse(self, "members", "an ensemble needs at least two member checkpoints")
        if self.weights is not None and not self.members:
            raise refuse(self, "weights", "weights belong to an ensemble's members")
        check_member_weights(self)
        if self.index_kind != "ivf" and (self.ivf_lists is not None or self.ivf_probe is not None):
            raise refuse(self, "ivf_lists" if self.ivf_lists is not None else "ivf_probe",
                         "ivf_lists and ivf_probe belong to index_kind 'ivf'")
        return self


class IndexRunOptions(_Options):
    events: PathText | None = Field(None, description="write progress events as JSON lines to this file")
    job_id: str | None = Field(None, description="the job this run belongs to (set by the job runner)")
    no_progress: bool = Field(False, description="no progress bar even on a terminal")
    experiments: PathText | None = Field(None, description="where runs are stored (default: the data root's experiments/)")
    name: str = Field("index", pattern=RUN_NAME_PATTERN,
                      description="the run folder under experiments whose index/ is written (and the index's name)")
