"""Data-parallel training with PyTorch's own FSDP2 (``fully_shard``), from torchrun's environment:

    torchrun --nproc_per_node 8 train.py ...      # NCCL on GPUs, gloo on CPU

Without torchrun every helper here is a no-op. Sharding is bottom-up, as torchtune does it: each
transformer block of the language model and of the vision tower (the classes in the model's
``_no_split_modules``) becomes an FSDP unit, then the root takes the rest (embeddings, projector,
lm_head).

- bf16 under FSDP computes blocks in bf16 and reduces gradients in fp32; the optimizer keeps fp32
  weights (one process uses bf16 autocast instead).
- ``--batch-size`` is per process: the global batch is batch_size * grad_accum * world, and step k
  trains on the same examples whatever the world size (2 processes of batch 2 reproduce 1 of
  batch 4, tested to 1e-5 for every objective).
- The reference is sharded like the policy: under LoRA it is the policy itself (adapters off),
  under full fine-tuning a frozen copy, or a ``--ref-cache`` each rank fills with its share.
- Metrics are means over ranks; only rank 0 logs and writes files.
"""
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm


@dataclass
class Dist:
    """Where this process stands: rank 0 of 1 without torchrun."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(rank, world, device)


def barrier(d: Dist):
    if d.enabled:
        dist.barrier()


def mean_over_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Each value averaged over the ranks (equal-sized shards: the global mean)."""
    if not d.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / d.world).tolist()))


def global_mean(d: Dist):
    """A function: a tensor's mean over the global batch (equal shards), the same on every rank.
    NaPO's dynamic q is taken from it (``objectives.napo``)."""
    def mean(x: torch.Tensor) -> torch.Tensor:
        m = x.mean()
        if d.enabled:
            dist.all_reduce(m)
            m = m / d.world
        return m
    return mean


def all_ranks_have(n: int, d: Dist) -> bool:
    """True when every rank has n > 0 (under FSDP all ranks must run every forward together)."""
    if not d.enabled:
        return n > 0
    t = torch.tensor([n], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.item() > 0


def shard(model, d: Dist, bf16: bool = False):
    """fully_shard every block, then the root. Parameters stay fp32 (the optimizer's master copy);
    FSDP casts them for compute."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    classes = {c for m in model.modules() for c in getattr(m, "_no_split_modules", None) or []}
    blocks = [m for m in model.modules() if type(m).__name__ in classes]
    if not blocks:
        raise ValueError(f"{type(model).__name__} lists no blocks in _no_split_modules: cannot shard it")
    for block in blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    # image features are computed outside forward (once per step): let FSDP gather for it too
    if hasattr(model, "get_image_features"):
        register_fsdp_forward_method(model, "get_image_features")
    # FSDP2 warns whenever a wrapped module returns a view (as image features can be): an in-place
    # op on one would skip its pre-backward hook. Nothing in mmpo changes a module's output in
    # place, and tests/test_distributed.py checks two processes' weights against one's for every
    # objective (SymMPO's four images included): here the warning is noise.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor")
    return model


def rank_slice(indices: list[int], d: Dist) -> list[int]:
    """This rank's contiguous share of a list whose length is a multiple of the world size."""
    n = len(indices) // d.world
    return indices[d.rank * n:(d.rank + 1) * n]


def score_all(dataset, batch_size: int, d: Dist, collate_fn, score, *, num_workers: int = 0, generator=None,
              desc: str | None = None) -> dict:
    """Score every example of ``dataset`` once, each rank its share: ``score(batch)`` gives a dict
    for each batch that ``collate_fn`` makes, and the union over every batch of every rank comes
    back on every rank. For the checks, caches and held-out figures, not for training. Every rank
    gets the same number of batches (its last ones wrap around to the start) and a batch is scored
    only when no rank's is empty, as FSDP needs every rank in every forward. ``generator``: the
    loader's own, so that a pass mid-run draws nothing from the training's RNG. ``desc``: a
    progress bar (rank 0)."""
    per_rank = -(-len(dataset) // d.world)
    mine = [(d.rank + k * d.world) % len(dataset) for k in range(per_rank)]
    batches = [mine[i:i + batch_size] for i in range(0, per_rank, batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                         collate_fn=collate_fn, generator=generator)
    scores = {}
    for batch in tqdm(loader, desc=desc, disable=desc is None or not d.main):
        if all_ranks_have(len(batch), d):
            scores.update(score(batch))
    return merge_dicts(scores, d)


def merge_dicts(part: dict, d: Dist) -> dict:
    """The union of every rank's dict (each rank scored its share of the examples)."""
    if not d.enabled:
        return part
    parts = [None] * d.world
    dist.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


def full_state(model, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Every weight (``trainable_only``: the trainable ones), gathered whole onto the CPU: a
    collective under FSDP, which every rank calls."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(model, options=opts)
