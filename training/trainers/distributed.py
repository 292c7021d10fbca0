"""Data parallelism for the student trainer: one global batch split over ranks, one global loss.

Each rank encodes its share of the batch; :func:`gather_with_local_grad` assembles the global
batch's embeddings on every rank (other ranks' parts as constants, this rank's with its
graph, as open_clip's ``gather_features`` does), so every rank computes the loss of the whole
batch and backpropagates only through what it encoded. How the gradients then add up to the
single-process gradient is :func:`scale_for_data_parallel`'s job.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """[b, ...] on each rank -> [world * b, ...] in rank order; only this rank's slice has a graph."""
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts)


def rank_share(order: list[int], batch_size: int, rank: int, size: int) -> list[int]:
    """This rank's part of every global batch of ``order``: samples [rank * b, (rank + 1) * b) of
    each run of ``batch_size``, b = batch_size / size (an incomplete last batch is dropped)."""
    if batch_size % size:
        raise ValueError(f"student_model.batch_size={batch_size} does not split over {size} processes")
    local = batch_size // size
    full = len(order) // batch_size * batch_size
    return [order[start + rank * local + i] for start in range(0, full, batch_size) for i in range(local)]


def match_single_process_gradients(replicated: Iterable[nn.Parameter]) -> float:
    """Set up the gradients of a data-parallel run to equal one process's; returns the factor
    to multiply the loss by before every backward pass (1.0 in a single process).

    A parameter inside the towers gets, on rank r, the gradient through rank r's slice only;
    the single-process gradient is the SUM over ranks, but DDP AVERAGES, hence the loss times
    the world size. A parameter applied to the gathered batch (the logit scale, CLIP-KD's
    projections) gets the whole gradient on every rank; ``replicated`` lists those, and a hook
    (registered once, here) divides theirs by the world size again, before DDP's averaging for
    those DDP holds.
    """
    _, size = world()
    if size == 1:
        return 1.0
    for param in replicated:
        param.register_hook(lambda grad: grad / size)
    return float(size)


def launch(nproc: int, entrypoint: Callable[..., None], args: Sequence[str]) -> None:
    """Run ``entrypoint(*args)`` in ``nproc`` local processes, as ``torchrun --standalone
    --nproc-per-node nproc`` would (torch's own launcher API: rendezvous on a free local port,
    RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR set per process); a failed process raises here."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"clipforge-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    elastic_launch(config, entrypoint)(*args)


def init_process_group() -> torch.device:
    """Join the launcher's process group (NCCL on GPUs, gloo on CPU); this process's device."""
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return torch.device("cpu")
