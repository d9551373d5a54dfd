"""Collectives the trainer relies on, under torchrun, on the backend training uses (NCCL on CUDA,
gloo on the CPU).

The trainer opens no process group for a single rank, so a one-GPU training job alone never
touches NCCL; this probe opens one and runs what a multi-rank job runs: all_reduce (validation
sums), the differentiable all_gather of the contrastive loss with its backward, and the object
gather and broadcast of validation features and metrics.
Usage: torchrun --standalone --nproc-per-node N -m -- tests.bench.gpu_check.nccl_probe --out FILE
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    started = time.perf_counter()
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120), **({"device_id": device} if cuda else {}))
    init_s = time.perf_counter() - started

    summed = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(summed)
    expected_sum = world_size * (world_size + 1) / 2

    features = torch.randn(8, 32, device=device, requires_grad=True)
    gathered = torch.cat(dist_fn.all_gather(features), dim=0)
    (gathered * 2).sum().backward()
    # The backward of all_gather sums each rank's slice of the gradient over the ranks.
    expected_grad = 2.0 * world_size

    objects = [None] * world_size
    dist.all_gather_object(objects, {"rank": rank})
    box = [{"metrics": rank}] if rank == 0 else [None]
    dist.broadcast_object_list(box, src=0)
    if cuda:
        torch.cuda.synchronize(device)
    result = {
        "backend": dist.get_backend(), "world_size": world_size, "device": str(device),
        "init_s": round(init_s, 3),
        "all_reduce_ok": bool(torch.all(summed == expected_sum).item()),
        "all_gather_backward_ok": gathered.shape[0] == 8 * world_size
                                  and bool(torch.allclose(features.grad, torch.full_like(features, expected_grad))),
        "object_collectives_ok": [o["rank"] for o in objects] == list(range(world_size)) and box[0] == {"metrics": 0},
        "nccl_version": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
    }
    result["ok"] = result["all_reduce_ok"] and result["all_gather_backward_ok"] and result["object_collectives_ok"]
    dist.destroy_process_group()
    if rank == 0:
        Path(args.out).write_text(json.dumps(result))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
