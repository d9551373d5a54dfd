"""L2-normalised image features of an LMDB gallery and text features of a texts jsonl.

Batches go through the model in eval mode without gradients; on a GPU under fp16 or bf16
autocast (weights stay fp32). Features come back as float32 on the CPU, in dataset order, with
their ids, so a gallery of N images costs N x dim floats and nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from services.trainer.model import encode_image, encode_text
from services.trainer.engine.precision import autocast


@dataclass
class Features:
    ids: list[Any]
    features: torch.Tensor  # (n, dim) float32, L2-normalised, CPU


def _features(
    model: nn.Module,
    dataset,
    collate: Callable[[list], Any],
    encode: Callable[[Any], torch.Tensor],
    ids_of: Callable[[Any], list[Any]],
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    precision: str,
    progress: Callable[[int, int], None] | None,
) -> Features:
    """Encodes ``dataset`` batch by batch in eval mode, without gradients, under the precision's
    autocast (engine/precision.py decides it, as for training)."""
    batches = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                         collate_fn=collate, pin_memory=device.type == "cuda")
    model.eval()
    ids: list[Any] = []
    chunks: list[torch.Tensor] = []
    with torch.inference_mode(), autocast(precision, device):
        for batch in batches:
            feats = encode(batch).float()
            chunks.append(F.normalize(feats, dim=-1).cpu())
            ids.extend(ids_of(batch))
            if progress is not None:
                progress(len(ids), len(dataset))
    if not chunks:
        raise ValueError("nothing to encode: the data set is empty")
    features = torch.cat(chunks)
    if not torch.isfinite(features).all():
        raise FloatingPointError(
            "the model produced NaN or infinite features; try --precision fp32 or check the checkpoint"
        )
    return Features(ids, features)


def image_features(
    model: nn.Module,
    dataset,
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str = "amp",
    progress: Callable[[int, int], None] | None = None,
) -> Features:
    """Features of every image of a ``GalleryDataset`` (items ``(image_id, pixel tensor)``)."""
    from services.trainer.data.lmdb_read import collate_gallery

    return _features(
        model, dataset, collate_gallery,
        lambda batch: encode_image(model, batch[1].to(device, non_blocking=True)),
        lambda batch: list(batch[0]),
        device=device, batch_size=batch_size, num_workers=num_workers, precision=precision, progress=progress,
    )


def _collate_texts(batch: list[tuple[Any, str, torch.Tensor, torch.Tensor]]):
    ids, _texts, input_ids, masks = zip(*batch)
    return list(ids), torch.stack(list(input_ids)), torch.stack(list(masks))


def text_features(
    model: nn.Module,
    dataset,
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str = "amp",
    progress: Callable[[int, int], None] | None = None,
) -> Features:
    """Features of every query of a ``TextsDataset`` (items ``(text_id, text, ids, mask)``);
    the attention mask is always passed."""
    return _features(
        model, dataset, _collate_texts,
        lambda batch: encode_text(model, batch[1].to(device), batch[2].to(device)),
        lambda batch: batch[0],
        device=device, batch_size=batch_size, num_workers=num_workers, precision=precision, progress=progress,
    )
