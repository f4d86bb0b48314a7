"""torch.distributed set-up for the trainer: the same command runs alone or under torchrun.

Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the process group uses NCCL on GPUs
and gloo on CPUs; the model is wrapped with DDP or FSDP2 (`fully_shard` on every block, then the
root — parallelism applied from outside, torchtitan-style). Without torchrun everything is a no-op.

Multi-node: run the same torchrun line on every machine with a shared rendezvous endpoint, e.g.
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id run1 \
        -m gptqwen pretrain --config qwen3-shakespeare train.dist=fsdp train.ckpt_format=sharded --out /shared/runs/q3
The run folder (and data.dir) must be on a filesystem every machine sees: global rank 0 builds the
dataset and writes config and logs, and every rank reads the checkpoints it resumes from.

`pretrain` can also run inside a program that set up its own process group (it then leaves it alone).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gptqwen.utils import pick_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # setup() created the process group, so cleanup() destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun; pick this process's device."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(device=pick_device(device_name))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_name, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()  # a caller that set up its own group keeps it after training
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world, local, device, owns)


def apply_activation_checkpointing(decoder: torch.nn.Module) -> None:
    """Wrap each decoder block so its activations are recomputed in the backward pass instead of stored.

    Applied from outside the model, as torchtitan does: the model stays plain, and torch's wrapper keeps the
    state-dict names of the blocks (checkpoints and exports do not see it). Non-reentrant checkpointing, so
    blocks with keyword inputs, frozen parameters (LoRA) and `torch.compile` work; gradients are unchanged."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    for i, block in enumerate(decoder.blocks):
        decoder.blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def wrap_model(model: torch.nn.Module, info: DistInfo, strategy: str) -> torch.nn.Module:
    """DDP or FSDP2 around `model` (already on its device); unchanged for a single process."""
    if not info.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        decoders = [m for m in model.modules() if isinstance(getattr(m, "blocks", None), torch.nn.ModuleList)]
        for block in decoders[0].blocks if decoders else []:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain Transformer inside DDP / torch.compile wrappers (FSDP2 shards in place: no wrapper)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
