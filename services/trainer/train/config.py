"""Settings of one training run, checked before any process group or model is created."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """Options that cannot make a run (named in the message)."""


@dataclass
class TrainConfig:
    train_data: Path
    val_data: Path | None
    logs: Path
    name: str
    vision_model: str = "ViT-B-16"
    text_model: str = "RoBERTa-wwm-ext-base-chinese"
    num_workers: int = 4
    valid_num_workers: int = 1
    context_length: int = 52
    use_augment: bool = False
    log_interval: int = 10
    report_training_batch_acc: bool = False
    save_step_frequency: int | None = None
    save_epoch_frequency: int = 1
    events: Path | None = None
    job_id: str | None = None
    progress: bool = True
    batch_size: int = 128
    valid_batch_size: int = 128
    max_steps: int | None = None
    max_epochs: int | None = None
    valid_step_interval: int | None = None
    valid_epoch_interval: int | None = 1
    lr: float = 5e-5
    wd: float = 0.001
    warmup: int = 100
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    accum_freq: int = 1
    precision: str = "amp"
    loss: str = "clip"
    dsl_temperature: float = 1.0
    seed: int = 123
    freeze_vision: bool = False
    grad_checkpointing: bool = False
    attn_implementation: str | None = None
    device: str = "auto"
    resume: Path | None = None
    reset_data_offset: bool = False
    reset_optimizer: bool = False
    online: str = "off"
    trace_batches: Path | None = None

    @property
    def run_dir(self) -> Path:
        return self.logs / self.name

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """Build from parsed ``cnclip train`` arguments and check what can be checked early."""
        from services.trainer.model.configs import canonical_text_model, canonical_vision_model
        from services.trainer.train.online import make_online_hook

        def path(value: str | None) -> Path | None:
            return Path(value).expanduser() if value else None

        config = cls(
            train_data=Path(args.train_data).expanduser(),
            val_data=path(args.val_data),
            logs=Path(args.logs).expanduser(),
            name=args.name,
            vision_model=canonical_vision_model(args.vision_model),
            text_model=canonical_text_model(args.text_model),
            num_workers=args.num_workers,
            valid_num_workers=args.valid_num_workers,
            context_length=args.context_length,
            use_augment=args.use_augment,
            log_interval=args.log_interval,
            report_training_batch_acc=args.report_training_batch_acc,
            save_step_frequency=args.save_step_frequency,
            save_epoch_frequency=args.save_epoch_frequency,
            events=path(args.events),
            job_id=args.job_id,
            progress=not args.no_progress,
            batch_size=args.batch_size,
            valid_batch_size=args.valid_batch_size,
            max_steps=args.max_steps,
            max_epochs=args.max_epochs,
            valid_step_interval=args.valid_step_interval,
            valid_epoch_interval=args.valid_epoch_interval,
            lr=args.lr,
            wd=args.wd,
            warmup=args.warmup,
            beta1=args.beta1,
            beta2=args.beta2,
            eps=args.eps,
            accum_freq=args.accum_freq,
            precision=args.precision,
            loss=args.loss,
            dsl_temperature=args.dsl_temperature,
            seed=args.seed,
            freeze_vision=args.freeze_vision,
            grad_checkpointing=args.grad_checkpointing,
            attn_implementation=args.attn_implementation,
            device=args.device,
            resume=path(args.resume),
            reset_data_offset=args.reset_data_offset,
            reset_optimizer=args.reset_optimizer,
            online=args.online,
            trace_batches=path(getattr(args, "trace_batches", None)),
        )
        make_online_hook(config.online)  # refuses modes this build cannot run
        config.check()
        return config

    def check(self) -> None:
        if (self.max_steps is None) == (self.max_epochs is None):
            raise ConfigError("give exactly one of --max-steps and --max-epochs")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"--name must be a plain folder name, got {self.name!r}")
        for option, folder in (("--train-data", self.train_data), ("--val-data", self.val_data)):
            if folder is None:
                continue
            if not folder.is_dir():
                raise ConfigError(f"{option} {folder} is not a directory (expected an LMDB split dir such as .../lmdb/train)")
            missing = [sub for sub in ("imgs", "pairs") if not (folder / sub).is_dir()]
            if missing:
                raise ConfigError(f"{option} {folder} has no {' or '.join(missing)} LMDB (build it with cnclip build-lmdb)")
        if self.resume is not None and not self.resume.exists():
            raise ConfigError(f"--resume {self.resume}: no such file or directory")
        if self.valid_step_interval is not None and self.val_data is None:
            raise ConfigError("--valid-step-interval needs --val-data")
