"""The indexes this service answers for, loaded on first use and kept within a memory budget.

An index is found by name under the data root (``experiments/<name>/index/``); loading it
reads the index (shared/gallery_index.py), checks that the checkpoint that made it (or each of
an ensemble's members) is still there and unchanged (sha256), and loads its model with the
trainer's model code.
What goes wrong is an ``IndexUnavailable`` naming the problem; the other indexes keep serving.
When the loaded indexes and models together pass the budget, the least recently used go.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared import layout
from shared.gallery_index import (MANIFEST_FILE, GalleryIndex, IndexFormatError, checkpoint_sha256, load_index,
                                  read_manifest)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UnknownIndex(LookupError):
    """No index of that name (a 404)."""


class IndexUnavailable(RuntimeError):
    """The index exists but cannot serve (a 409): its files or its checkpoint are wrong."""


def _identity(path: Path) -> tuple[int, int]:
    stat = (path / MANIFEST_FILE).stat()
    return stat.st_ino, stat.st_mtime_ns


@dataclass
class LoadedIndex:
    name: str
    index: GalleryIndex
    models: list[torch.nn.Module]  # the checkpoint's, or each ensemble member's in manifest order
    device: torch.device
    nbytes: int
    identity: tuple[int, int] = (0, 0)

    @property
    def manifest(self):
        return self.index.manifest

    def _query(self, per_model: list[torch.Tensor]) -> np.ndarray:
        """L2-normalised features of each model -> what the index is searched with: the one
        model's, or the ensemble's fused as its prediction fuses scores (predict/ensemble.py)."""
        feats = [torch.nn.functional.normalize(f.float(), dim=-1).cpu().numpy() for f in per_model]
        if len(feats) == 1:
            return feats[0]
        from services.trainer.predict.ensemble import fused_features

        return fused_features(feats, self.manifest.weights)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        from services.trainer.model import encode_text
        from services.trainer.tokenizer import tokenize

        input_ids, mask = tokenize(texts, self.manifest.context_length)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            return self._query([encode_text(model, input_ids, mask) for model in self.models])

    def encode_image(self, image) -> np.ndarray:
        from services.trainer.data.transforms import image_transform
        from services.trainer.model import encode_image, image_resolution

        pixels = image_transform(image_resolution(self.manifest.vision_model))(image).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            return self._query([encode_image(model, pixels) for model in self.models])

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[Any, float]]]:
        scores, rows = self.index.search(queries, k)
        ids = self.index.ids
        return [[(ids[r], float(s)) for r, s in zip(row_ids, row_scores) if r >= 0]
                for row_ids, row_scores in zip(rows, scores)]


def index_path(experiments: Path, name: str) -> Path:
    if not NAME.match(name or ""):
        raise UnknownIndex(f"{name!r} is not an index name (letters, digits, '_', '.', '-'; at most 64)")
    return layout.index_dir(experiments, name)


def available(experiments: Path) -> list[dict[str, Any]]:
    """Every index folder under ``experiments`` with its manifest's headline (unreadable ones
    say why), newest first."""
    found = []
    if not experiments.is_dir():
        return found
    for run in experiments.iterdir():
        folder = run / layout.INDEX
        if not NAME.match(run.name) or not folder.is_dir():
            continue
        try:
            m = read_manifest(folder)
            found.append({"name": run.name, "count": m.count, "vision_model": m.vision_model,
                          "text_model": m.text_model, "index_kind": m.index_kind, "created": m.created,
                          "checkpoint": m.checkpoint, "recall_at_10": m.recall_at_10,
                          **({"members": [x.checkpoint for x in m.members], "weights": m.weights}
                             if m.members else {})})
        except IndexFormatError as exc:
            found.append({"name": run.name, "error": str(exc), "created": 0})
    return sorted(found, key=lambda item: item["created"], reverse=True)


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class IndexRegistry:
    def __init__(self, experiments: Path, device: torch.device, budget_bytes: int):
        self.experiments = Path(experiments)
        self.device = device
        self.budget_bytes = budget_bytes
        self._loaded: OrderedDict[str, LoadedIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def cached(self, name: str) -> LoadedIndex | None:
        """The index if it is loaded and current (cheap: no loading, safe on the event loop)."""
        with self._lock:
            hit = self._loaded.get(name)
        if hit is None:
            return None
        try:
            if not self._fresh(hit, index_path(self.experiments, name)):
                return None
        except UnknownIndex:
            return None
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
        return hit

    def get(self, name: str) -> LoadedIndex:
        path = index_path(self.experiments, name)
        with self._lock:
            hit = self._loaded.get(name)
            if hit is not None and self._fresh(hit, path):
                self._loaded.move_to_end(name)
                return hit
            gate = self._loading.setdefault(name, threading.Lock())
        with gate:  # one load per name at a time; other names load (and serve) meanwhile
            with self._lock:
                hit = self._loaded.get(name)
                if hit is not None and self._fresh(hit, path):
                    return hit
            loaded = self._load(name, path)
            with self._lock:
                self._loaded[name] = loaded
                self._loaded.move_to_end(name)
                self._evict(keep=name)
            return loaded

    @staticmethod
    def _fresh(loaded: LoadedIndex, path: Path) -> bool:
        """A rebuilt index (a new folder renamed into place, so a new manifest file) is loaded
        again; one stat per query, not a read."""
        try:
            return _identity(path) == loaded.identity
        except OSError:
            return False

    def _evict(self, keep: str) -> None:
        while sum(x.nbytes for x in self._loaded.values()) > self.budget_bytes and len(self._loaded) > 1:
            oldest = next(iter(self._loaded))
            if oldest == keep:
                break
            del self._loaded[oldest]

    def _load(self, name: str, path: Path) -> LoadedIndex:
        from services.trainer.model import create_model
        from services.trainer.model.checkpoint import CheckpointError, load_weights

        if not path.exists():
            raise UnknownIndex(f"no index named {name!r} (build one with cnclip index --name {name})")
        try:
            identity = _identity(path)
        except OSError:
            identity = (0, 0)
        try:
            index = load_index(path)
        except IndexFormatError as exc:
            raise IndexUnavailable(f"index {name!r} cannot be read: {exc}") from None
        manifest = index.manifest
        models = []
        for member in manifest.checkpoints:
            checkpoint = Path(member.checkpoint)
            if not checkpoint.exists():
                raise IndexUnavailable(f"index {name!r}: its checkpoint {checkpoint} no longer exists")
            if checkpoint_sha256(checkpoint) != member.checkpoint_sha256:
                raise IndexUnavailable(f"index {name!r}: its checkpoint {checkpoint} changed since the index was "
                                       "built (sha256 differs); build the index again")
            try:
                model = create_model(manifest.vision_model, manifest.text_model, attn_implementation="sdpa",
                                     precision="fp32")
                load_weights(model, checkpoint)
            except (CheckpointError, ValueError, RuntimeError) as exc:
                raise IndexUnavailable(
                    f"index {name!r}: its checkpoint {checkpoint} does not fit its model: {exc}"[:1000]) from None
            dim = model.config.projection_dim
            if dim != member.dim:
                raise IndexUnavailable(f"index {name!r}: the model of {checkpoint} embeds in {dim} dimensions, "
                                       f"its embeddings have {member.dim}")
            models.append(model.to(self.device).eval())
        nbytes = index.nbytes + sum(model_bytes(model) for model in models)
        return LoadedIndex(name, index, models, self.device, nbytes, identity)
