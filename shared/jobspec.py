"""Job specifications: what a user submits to train or predict.

A spec is the service's fields (nodes, GPUs per node, idempotency key, auto-resume, run name)
plus the job options of shared/options.py, which define every option of ``cnclip train`` /
``cnclip predict`` once. Pydantic validates at the API boundary, so a bad spec is refused with
the offending field named and nothing queued. The job runner hands the trainer the resolved
options as a JSON file (``resolved_options``), never a re-rendered command line.

Paths in a spec are relative to the data root (``DATAPATH``): the service that runs the job
decides where the data root is, and a spec can never reach outside it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared import layout
from shared.options import IndexOptions, PredictOptions, TrainOptions, path_kind, refuse

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


class OutputThroughLink(PathOutsideDataRoot):
    """An output path that is, or passes through, a symbolic link: even a link that stays
    inside the data root would let a job overwrite a data set or its own inputs."""


def output_under(data_root: Path, relative: str) -> Path:
    """The absolute path a job writes ``relative`` to. Every part of it below the (resolved)
    data root is looked at without following links, and one that is a link is refused: the
    path returned names no link, so what the job writes lands where the path says."""
    root = Path(data_root).resolve()
    current = root
    for part in PurePosixPath(_check_relative_path(relative)).parts:
        current = current / part
        if current.is_symlink():
            raise OutputThroughLink(f"{relative!r} passes through a symbolic link "
                                    f"({current.relative_to(root).as_posix()})")
    return current


# Where a job may write, relative to the data root: outputs never replace a data set, a
# pretrained checkpoint or the service's own state.
OUTPUT_ROOTS: dict[str, tuple[str, ...]] = {
    "output": (f"{layout.EXPERIMENTS}/",),
    "score_dir": (layout.SCORES, f"{layout.EXPERIMENTS}/"),
    "online_cache_dir": (layout.ONLINE_CACHE, f"{layout.EXPERIMENTS}/"),
}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # How the job is run (the service's fields; the job options come from shared/options.py).
    nnodes: int = Field(1, ge=1, le=64, description="Machines (WORKER_CNT of train.sh)")
    nproc_per_node: int = Field(1, ge=1, le=16, description="Processes (GPUs) per machine (GPUS_PER_NODE)")
    idempotency_key: str | None = Field(
        None, pattern=IDEMPOTENCY_PATTERN,
        description="Submitting the same key again returns the job created the first time")
    auto_resume: bool = Field(
        True, description="If the runner dies mid-job, run the job again (training resumes from "
                          "its latest checkpoint) instead of failing it")

    @model_validator(mode="after")
    def _paths_stay_inside(self):
        """Every path option is relative to the data root; outputs only where outputs belong."""
        for name, field in type(self).model_fields.items():
            kind = path_kind(field)
            value = getattr(self, name)
            if kind is None or value in (None, []):
                continue
            try:
                values = [_check_relative_path(v) for v in (value if isinstance(value, list) else [value])]
            except ValueError as exc:
                raise refuse(self, name, str(exc)) from None
            setattr(self, name, values if isinstance(value, list) else values[0])
            allowed = OUTPUT_ROOTS.get(name)
            if kind == "output" and allowed and not any(values[0].startswith(a) for a in allowed):
                raise refuse(self, name, f"must be under {' or '.join(allowed)} of the data root")
            if name == "output" and not values[0].endswith(".jsonl"):
                raise refuse(self, name, "must be a .jsonl file")
        return self

    def fingerprint(self) -> str:
        """Stable digest of the spec without its idempotency key: a re-submission under the
        same key must carry the same spec."""
        data = self.model_dump(mode="json", exclude={"idempotency_key"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def input_paths(self) -> dict[str, str]:
        """Field name -> relative path of every input that must exist before the job runs."""
        paths: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if path_kind(field) != "input" or value in (None, []):
                continue
            if isinstance(value, list):
                paths.update({f"{name}[{i}]": v for i, v in enumerate(value)})
            else:
                paths[name] = value
        return paths

    def missing_inputs(self, data_root: Path) -> list[str]:
        """Human-readable reasons for each input that does not exist (or leaves the root)."""
        problems = []
        for field, relative in self.input_paths().items():
            try:
                if not resolve_under(data_root, relative).exists():
                    problems.append(f"{field}: {relative} does not exist under the data root")
            except PathOutsideDataRoot as exc:
                problems.append(f"{field}: {exc}")
        return problems

    def output_paths(self, job_id: str = "") -> dict[str, str]:
        """Field name -> relative path of every place the job writes (its defaults included)."""
        paths = {name: getattr(self, name) for name, field in type(self).model_fields.items()
                 if path_kind(field) == "output" and getattr(self, name) not in (None, [])}
        for name, value in self._default_outputs(job_id).items():
            paths.setdefault(name, value)
        return paths

    def _default_outputs(self, job_id: str) -> dict[str, str]:
        return {"online_cache_dir": layout.ONLINE_CACHE}

    def linked_outputs(self, data_root: Path, job_id: str = "") -> list[str]:
        """Reasons for each output that is, or passes through, a symbolic link."""
        problems = []
        for field, relative in self.output_paths(job_id).items():
            try:
                output_under(data_root, relative)
            except PathOutsideDataRoot as exc:
                problems.append(f"{field}: {exc}")
        return problems

    def option_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _resolved(self, data_root: Path) -> dict[str, Any]:
        """The job options with every path made absolute under the data root."""
        root = Path(data_root)
        options: dict[str, Any] = {}
        for name in self.option_names():
            value = getattr(self, name)
            kind = path_kind(type(self).model_fields[name])
            if kind and value not in (None, []):
                # Inputs may be links inside the root; outputs may not be links at all.
                resolve = output_under if kind == "output" else resolve_under
                value = ([str(resolve(root, v)) for v in value] if isinstance(value, list)
                         else str(resolve(root, value)))
            options[name] = value
        return json.loads(json.dumps(options))

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


class TrainSpec(_Spec, TrainOptions):
    """A training job: the service's fields plus ``TrainOptions``."""

    kind: Literal["train"] = "train"
    name: str | None = Field(None, pattern=NAME_PATTERN,
                             description="Output folder under experiments/ (default: the job id)")
    continue_run: bool = Field(
        False, description="Continue the run already stored under this name (without it, a name "
                           "that is taken is refused)")

    def option_names(self) -> tuple[str, ...]:
        return tuple(TrainOptions.model_fields)

    def run_name(self, job_id: str) -> str:
        return self.name or job_id

    def resolved_options(self, data_root: Path, *, job_id: str, events: Path | None = None,
                         resume_override: Path | None = None) -> dict[str, Any]:
        """What ``cnclip train --options-file`` reads. ``resume_override`` continues an
        interrupted run from its own latest checkpoint (keeping data offset and optimizer)."""
        options = self._resolved(data_root)
        options.update(name=self.run_name(job_id), job_id=job_id)
        layout.fill_unset(options, layout.default_places(data_root))
        if resume_override is not None:
            options.update(resume=str(resume_override), reset_data_offset=False, reset_optimizer=False)
        if events is not None:
            options.update(events=str(events), no_progress=True)
        return options

    def output_dir(self, data_root: Path, name: str) -> Path:
        return Path(data_root) / layout.EXPERIMENTS / self.run_name(name)

    def _default_outputs(self, job_id: str) -> dict[str, str]:
        run = f"{layout.EXPERIMENTS}/{self.run_name(job_id)}" if self.name or job_id else layout.EXPERIMENTS
        return {**super()._default_outputs(job_id), "name": run}


class PredictSpec(_Spec, PredictOptions):
    """A prediction job: the service's fields plus ``PredictOptions``."""

    kind: Literal["predict"] = "predict"
    evaluate: bool = Field(True, description="Score the predictions when the texts carry ground truth")

    @model_validator(mode="after")
    def _output_is_not_an_input(self) -> "PredictSpec":
        if self.output is not None and self.output in self.input_paths().values():
            raise refuse(self, "output", "must not be one of the job's inputs")
        return self

    def option_names(self) -> tuple[str, ...]:
        return tuple(PredictOptions.model_fields)

    def input_paths(self) -> dict[str, str]:
        paths = super().input_paths()
        if self.mode == "ensemble-last" and self.score_dir and not self.members:
            paths["score_dir"] = self.score_dir  # read, not written, by ensemble-last
        return paths

    def output_path(self, data_root: Path, job_id: str) -> Path:
        return output_under(data_root, self.output or f"{layout.RESULTS}/{job_id}_predictions.jsonl")

    def _default_outputs(self, job_id: str) -> dict[str, str]:
        return {**super()._default_outputs(job_id), "score_dir": layout.SCORES,
                "output": self.output or layout.RESULTS}

    def resolved_options(self, data_root: Path, *, job_id: str, events: Path | None = None,
                         resume_override: Path | None = None) -> dict[str, Any]:
        """What ``cnclip predict --options-file`` reads (a prediction is simply run again on a
        resume, reusing any member score matrices already saved)."""
        root = Path(data_root)
        options = self._resolved(root)
        options.update(output=str(self.output_path(root, job_id)), name=job_id, job_id=job_id)
        layout.fill_unset(options, layout.default_places(root, predict_mode=self.mode))
        if events is not None:
            options.update(events=str(events), no_progress=True)
        return options


class IndexSpec(_Spec, IndexOptions):
    """An index job: the service's fields plus ``IndexOptions``; writes
    ``experiments/<name>/index/`` (the name defaults to the job id)."""

    kind: Literal["index"] = "index"
    name: str | None = Field(None, pattern=NAME_PATTERN,
                             description="Run folder under experiments/ whose index/ is written, and the "
                                         "index's name in search (default: the job id)")

    def option_names(self) -> tuple[str, ...]:
        return tuple(IndexOptions.model_fields)

    def run_name(self, job_id: str) -> str:
        return self.name or job_id

    def resolved_options(self, data_root: Path, *, job_id: str, events: Path | None = None,
                         resume_override: Path | None = None) -> dict[str, Any]:
        """What ``cnclip index --options-file`` reads (a resumed build simply starts again)."""
        options = self._resolved(data_root)
        options.update(name=self.run_name(job_id), job_id=job_id,
                       experiments=str(Path(data_root) / layout.EXPERIMENTS))
        if events is not None:
            options.update(events=str(events), no_progress=True)
        return options


JobSpec = TrainSpec | PredictSpec | IndexSpec
SPEC_KINDS: dict[str, type[_Spec]] = {"train": TrainSpec, "predict": PredictSpec, "index": IndexSpec}


def spec_from_json(data: str | dict[str, Any]) -> JobSpec:
    raw = json.loads(data) if isinstance(data, str) else data
    model = SPEC_KINDS.get(raw.get("kind"), TrainSpec)
    return model.model_validate(raw)
