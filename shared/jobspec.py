"""Job specifications: what a user submits to train or predict.

The specs cover every option of the prototype's ``train.sh`` and ``predict.sh`` (single model,
ensemble with members and weights, ensemble of the saved last score matrices; online learning
``live`` / ``cache`` / ``off``; test-time online epochs; nodes and GPUs per node) and map onto
the ``cnclip train`` / ``cnclip predict`` options (docs/architecture.md). Pydantic validates at
the API boundary, so a bad spec is refused with the offending fields named and nothing queued.

Paths in a spec are relative to the data root (``DATAPATH``): the service that runs the job
decides where the data root is, and a spec can never reach outside it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

OnlineMode = Literal["off", "live", "cache"]
Precision = Literal["amp", "bf16", "fp16", "fp32"]
Device = Literal["auto", "cpu", "cuda"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]
PredictMode = Literal["single", "ensemble", "ensemble-last"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
IDEMPOTENCY_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class PathOutsideDataRoot(ValueError):
    """A spec path that leaves the data root (through ``..`` or a symbolic link)."""


def _check_relative_path(value: str) -> str:
    if not value or not value.strip():
        raise ValueError("must not be empty")
    if "\x00" in value or "\\" in value:
        raise ValueError("must be a plain relative path with '/' separators")
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("~"):
        raise ValueError("must be relative to the data root, not absolute")
    if any(part == ".." for part in path.parts):
        raise ValueError("must stay inside the data root ('..' is not allowed)")
    normalised = path.as_posix()
    if normalised in ("", "."):
        raise ValueError("must name a file or folder under the data root")
    return normalised


DataPath = Annotated[
    str,
    Field(max_length=1024, description="Path relative to the data root (DATAPATH)",
          examples=["datasets/MUGE/lmdb/train"]),
    AfterValidator(_check_relative_path),
]


def resolve_under(data_root: Path, relative: str) -> Path:
    """The absolute path of ``relative`` under ``data_root``; refuses any that escapes it,
    symbolic links included (checked after resolving them)."""
    root = Path(data_root).resolve()
    target = (root / _check_relative_path(relative)).resolve()
    if target != root and root not in target.parents:
        raise PathOutsideDataRoot(f"{relative!r} resolves outside the data root")
    return target


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # How the job is run.
    nnodes: int = Field(1, ge=1, le=64, description="Machines (WORKER_CNT of train.sh)")
    nproc_per_node: int = Field(1, ge=1, le=16, description="Processes (GPUs) per machine (GPUS_PER_NODE)")
    device: Device = "auto"
    idempotency_key: str | None = Field(
        None, pattern=IDEMPOTENCY_PATTERN,
        description="Submitting the same key again returns the job created the first time")
    auto_resume: bool = Field(
        True, description="If the runner dies mid-job, run the job again (training resumes from "
                          "its latest checkpoint) instead of failing it")

    # Model options shared by train and predict.
    vision_model: str = Field("ViT-B-16", max_length=64)
    text_model: str = Field("RoBERTa-wwm-ext-base-chinese", max_length=64)
    context_length: int = Field(52, ge=8, le=512)
    precision: Precision = "amp"
    attn_implementation: AttnImplementation | None = None

    def fingerprint(self) -> str:
        """Stable digest of the spec without its idempotency key: a re-submission under the
        same key must carry the same spec."""
        data = self.model_dump(mode="json", exclude={"idempotency_key"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def data_paths(self) -> dict[str, str]:
        """Field name -> relative path of every input that must exist before the job runs."""
        raise NotImplementedError

    def missing_inputs(self, data_root: Path) -> list[str]:
        """Human-readable reasons for each input that does not exist (or leaves the root)."""
        problems = []
        for field, relative in self.data_paths().items():
            try:
                if not resolve_under(data_root, relative).exists():
                    problems.append(f"{field}: {relative} does not exist under the data root")
            except PathOutsideDataRoot as exc:
                problems.append(f"{field}: {exc}")
        return problems

    def torchrun_args(self, *, node_rank: int = 0, master_addr: str = "127.0.0.1",
                      master_port: int = 29500) -> list[str]:
        args = [f"--nnodes={self.nnodes}", f"--nproc-per-node={self.nproc_per_node}"]
        if self.nnodes == 1:
            # A private rendezvous per job: two jobs on one machine never collide on a port.
            args += ["--standalone"]
        else:
            args += [f"--node-rank={node_rank}", f"--master-addr={master_addr}",
                     f"--master-port={master_port}"]
        return args

    def _model_args(self) -> list[str]:
        args = ["--vision-model", self.vision_model, "--text-model", self.text_model,
                "--context-length", str(self.context_length), "--precision", self.precision,
                "--device", self.device]
        if self.attn_implementation:
            args += ["--attn-implementation", self.attn_implementation]
        return args


class TrainSpec(_Spec):
    """Options of the prototype's ``train.sh``; names follow its params.py."""

    kind: Literal["train"] = "train"
    name: str | None = Field(None, pattern=NAME_PATTERN,
                             description="Output folder under experiments/ (default: the job id)")
    train_data: DataPath = Field(..., description="LMDB dir of the training split")
    val_data: DataPath | None = Field(None, description="LMDB dir of the validation split")
    num_workers: int = Field(4, ge=0, le=64)
    valid_num_workers: int = Field(1, ge=0, le=64)
    log_interval: int = Field(10, ge=1)
    report_training_batch_acc: bool = False
    batch_size: int = Field(128, ge=1, le=65536)
    valid_batch_size: int = Field(128, ge=1, le=65536)
    max_steps: int | None = Field(None, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    valid_step_interval: int | None = Field(None, ge=1)
    valid_epoch_interval: int | None = Field(None, ge=-1, description="-1: never validate")
    lr: float = Field(5e-5, gt=0, le=10)
    wd: float = Field(0.001, ge=0, le=10)
    warmup: int = Field(100, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.98, ge=0, lt=1)
    eps: float = Field(1e-6, gt=0, le=1)
    use_augment: bool = False
    freeze_vision: bool = False
    grad_checkpointing: bool = False
    accum_freq: int = Field(1, ge=1, le=1024)
    save_step_frequency: int | None = Field(None, ge=1)
    save_epoch_frequency: int = Field(1, ge=1)
    resume: DataPath | None = Field(None, description="Checkpoint to start from (pretrained or earlier run)")
    reset_data_offset: bool = False
    reset_optimizer: bool = False
    seed: int = Field(123, ge=0, le=2**31 - 1)
    loss: Literal["clip", "dsl"] = "clip"
    dsl_temperature: float = Field(1000.0, gt=0, le=1e6)
    online: OnlineMode = "off"

    @field_validator("max_epochs")
    @classmethod
    def _one_length(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("max_steps") is not None:
            raise ValueError("give max_steps or max_epochs, not both")
        return value

    def data_paths(self) -> dict[str, str]:
        paths = {"train_data": self.train_data}
        if self.val_data:
            paths["val_data"] = self.val_data
        if self.resume:
            paths["resume"] = self.resume
        return paths

    def to_cli_args(self, data_root: Path, *, name: str, events: Path | None = None,
                    resume_override: Path | None = None) -> list[str]:
        """Arguments of ``cnclip train``. ``resume_override`` continues an interrupted run
        from its own latest checkpoint (keeping the data offset and optimizer state)."""
        root = Path(data_root)
        args = ["train", "--train-data", str(resolve_under(root, self.train_data))]
        if self.val_data:
            args += ["--val-data", str(resolve_under(root, self.val_data))]
        args += ["--logs", str(root / "experiments"), "--name", self.name or name,
                 "--num-workers", str(self.num_workers),
                 "--valid-num-workers", str(self.valid_num_workers),
                 "--log-interval", str(self.log_interval),
                 "--batch-size", str(self.batch_size),
                 "--valid-batch-size", str(self.valid_batch_size)]
        if self.max_steps is not None:
            args += ["--max-steps", str(self.max_steps)]
        if self.max_epochs is not None:
            args += ["--max-epochs", str(self.max_epochs)]
        if self.valid_step_interval is not None:
            args += ["--valid-step-interval", str(self.valid_step_interval)]
        if self.valid_epoch_interval is not None:
            args += ["--valid-epoch-interval", str(self.valid_epoch_interval)]
        args += ["--lr", repr(self.lr), "--wd", repr(self.wd), "--warmup", str(self.warmup),
                 "--beta1", repr(self.beta1), "--beta2", repr(self.beta2), "--eps", repr(self.eps),
                 "--accum-freq", str(self.accum_freq),
                 "--save-epoch-frequency", str(self.save_epoch_frequency),
                 "--seed", str(self.seed), "--loss", self.loss,
                 "--dsl-temperature", repr(self.dsl_temperature), "--online", self.online]
        if self.save_step_frequency is not None:
            args += ["--save-step-frequency", str(self.save_step_frequency)]
        args += self._model_args()
        for flag, enabled in (("--report-training-batch-acc", self.report_training_batch_acc),
                              ("--use-augment", self.use_augment),
                              ("--freeze-vision", self.freeze_vision),
                              ("--grad-checkpointing", self.grad_checkpointing)):
            if enabled:
                args.append(flag)
        if resume_override is not None:
            args += ["--resume", str(resume_override)]
        else:
            if self.resume:
                args += ["--resume", str(resolve_under(root, self.resume))]
            if self.reset_data_offset:
                args.append("--reset-data-offset")
            if self.reset_optimizer:
                args.append("--reset-optimizer")
        if events is not None:
            args += ["--events", str(events), "--no-progress"]
        return args

    def output_dir(self, data_root: Path, name: str) -> Path:
        return Path(data_root) / "experiments" / (self.name or name)


class PredictSpec(_Spec):
    """Options of the prototype's ``predict.sh``: ``single`` (one checkpoint, optionally with
    test-time online learning), ``ensemble`` (members with weights) and ``ensemble-last``
    (fuse the score matrices saved by an earlier ensemble run)."""

    kind: Literal["predict"] = "predict"
    mode: PredictMode = "single"
    image_data: DataPath = Field(..., description="LMDB dir of the split to rank images of")
    text_data: DataPath = Field(..., description="Queries (*_texts.jsonl)")
    resume: DataPath | None = Field(None, description="Checkpoint (mode single)", validate_default=True)
    members: list[DataPath] = Field(default_factory=list, max_length=64, validate_default=True,
                                    description="Member checkpoints (mode ensemble)")
    weights: list[float] | None = Field(None, description="One weight per member (or per saved score matrix)")
    score_dir: DataPath | None = Field(None, validate_default=True,
                                       description="Member score matrices: written by ensemble, read by ensemble-last")
    output: DataPath | None = Field(None, description="Predictions jsonl (default experiments/results/<job>.jsonl)")
    top_k: int = Field(10, ge=1, le=1000)
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader workers for images")
    img_batch_size: int = Field(64, ge=1, le=65536)
    text_batch_size: int = Field(64, ge=1, le=65536)
    save_scores: bool = False
    scores_dtype: Literal["float16", "float32"] = "float16"
    fit_weights_on: DataPath | None = Field(None, description="Validation texts to fit ensemble weights on")
    fit_images: DataPath | None = Field(None, validate_default=True,
                                        description="Validation LMDB dir for fitting weights")
    online: OnlineMode = "off"
    online_max_epochs: int = Field(1, ge=1, le=1000, description="Epochs of test-time online learning")
    evaluate: bool = Field(True, description="Score the predictions when the texts carry ground truth")

    @field_validator("resume")
    @classmethod
    def _resume_for_single(cls, value: str | None, info: ValidationInfo) -> str | None:
        mode = info.data.get("mode")
        if mode == "single" and value is None:
            raise ValueError("mode 'single' needs a checkpoint")
        if mode in ("ensemble", "ensemble-last") and value is not None:
            raise ValueError(f"mode {mode!r} takes members, not resume")
        return value

    @field_validator("members")
    @classmethod
    def _members_for_ensemble(cls, value: list[str], info: ValidationInfo) -> list[str]:
        mode = info.data.get("mode")
        if mode == "ensemble" and len(value) < 2:
            raise ValueError("mode 'ensemble' needs at least two member checkpoints")
        if mode != "ensemble" and value:
            raise ValueError(f"mode {mode!r} takes no members")
        return value

    @field_validator("weights")
    @classmethod
    def _weights_match(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if value is None:
            return value
        mode = info.data.get("mode")
        if mode == "single":
            raise ValueError("mode 'single' takes no weights")
        members = info.data.get("members") or []
        if mode == "ensemble" and len(value) != len(members):
            raise ValueError(f"{len(value)} weights for {len(members)} members")
        if any(w < 0 or w != w or w == float("inf") for w in value) or not any(w > 0 for w in value):
            raise ValueError("weights must be finite, non-negative and not all zero")
        return value

    @field_validator("score_dir")
    @classmethod
    def _scores_for_last(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("mode") == "ensemble-last" and value is None:
            raise ValueError("mode 'ensemble-last' reads saved score matrices from score_dir")
        return value

    @field_validator("fit_images")
    @classmethod
    def _fit_pair(cls, value: str | None, info: ValidationInfo) -> str | None:
        if (value is None) != (info.data.get("fit_weights_on") is None):
            raise ValueError("fit_weights_on and fit_images go together")
        if value is not None and info.data.get("mode") != "ensemble":
            raise ValueError("weights are fitted in mode 'ensemble' only")
        return value

    @field_validator("online")
    @classmethod
    def _online_single(cls, value: str, info: ValidationInfo) -> str:
        if value != "off" and info.data.get("mode") not in (None, "single"):
            raise ValueError("test-time online learning needs mode 'single'")
        return value

    def data_paths(self) -> dict[str, str]:
        paths = {"image_data": self.image_data, "text_data": self.text_data}
        if self.resume:
            paths["resume"] = self.resume
        for i, member in enumerate(self.members):
            paths[f"members[{i}]"] = member
        if self.mode == "ensemble-last" and self.score_dir:
            paths["score_dir"] = self.score_dir
        if self.fit_weights_on and self.fit_images:
            paths["fit_weights_on"] = self.fit_weights_on
            paths["fit_images"] = self.fit_images
        return paths

    def output_path(self, data_root: Path, job_id: str) -> Path:
        if self.output:
            return resolve_under(data_root, self.output)
        return Path(data_root) / "experiments" / "results" / f"{job_id}_predictions.jsonl"

    def to_cli_args(self, data_root: Path, *, name: str, events: Path | None = None,
                    resume_override: Path | None = None) -> list[str]:
        """Arguments of ``cnclip predict`` (``resume_override`` is unused: a prediction is
        simply run again, reusing any member score matrices already saved)."""
        root = Path(data_root)
        args = ["predict", "--mode", self.mode,
                "--image-data", str(resolve_under(root, self.image_data)),
                "--text-data", str(resolve_under(root, self.text_data)),
                "--output", str(self.output_path(root, name)),
                "--top-k", str(self.top_k), "--scores-dtype", self.scores_dtype,
                "--num-workers", str(self.num_workers), "--img-batch-size", str(self.img_batch_size),
                "--text-batch-size", str(self.text_batch_size),
                "--online", self.online, "--online-max-epochs", str(self.online_max_epochs)]
        if self.resume:
            args += ["--resume", str(resolve_under(root, self.resume))]
        if self.members:
            args += ["--members", *(str(resolve_under(root, m)) for m in self.members)]
        if self.weights:
            args += ["--weights", *(repr(float(w)) for w in self.weights)]
        if self.score_dir:
            args += ["--score-dir", str(resolve_under(root, self.score_dir))]
        if self.save_scores:
            args.append("--save-scores")
        if self.fit_weights_on and self.fit_images:
            args += ["--fit-weights-on", str(resolve_under(root, self.fit_weights_on)),
                     "--fit-images", str(resolve_under(root, self.fit_images))]
        args += self._model_args()
        if events is not None:
            args += ["--events", str(events), "--no-progress"]
        return args


JobSpec = TrainSpec | PredictSpec


def spec_from_json(data: str | dict[str, Any]) -> JobSpec:
    raw = json.loads(data) if isinstance(data, str) else data
    model = PredictSpec if raw.get("kind") == "predict" else TrainSpec
    return model.model_validate(raw)
