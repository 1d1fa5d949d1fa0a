"""The reference model pi_ref: the one home of everything a run does with it.

Three forms, all giving the same numbers: under LoRA, the policy with its adapters off (no second
copy of the weights); under full fine-tuning, a frozen copy of the initial model; or a cache of
every reference log-prob, computed once before training and stored as safetensors keyed by example
id and view, with a fingerprint the caller gives (of the model, the data and the view settings;
stale: rebuilt). Why a cache: the frozen copy costs its weights' memory and one forward per step
(``python -m mmpo.bench`` measures both). SFT has none (``enabled=False``: zeros).

MFPO's iterative alignment makes the policy of each curriculum stage boundary the new reference
(``refresh``), saved as ``OUT/reference-<step>.safetensors`` for a resumed run (``restore``).
"""
import copy
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from mmpo import distributed, lora
from mmpo.constants import LOGPS_CHUNK, SHARE_PREFIX
from mmpo.data import Batch, collate
from mmpo.distributed import Dist
from mmpo.files import atomic_path
from mmpo.logps import sequence_logps


class Reference:
    """pi_ref of one run: ``logps(batch, features)`` ``(N,)`` from the cache when one is loaded, else
    live. ``refresh_at``: the steps where the policy becomes the reference."""

    def __init__(self, policy, frozen=None, *, enabled: bool = True, out: str = "", refresh_at=(),
                 share_prefix: bool = SHARE_PREFIX, chunk: int = LOGPS_CHUNK, d: Dist = Dist()):
        self.policy, self.frozen, self.enabled = policy, frozen, enabled
        self.share_prefix, self.chunk = share_prefix, chunk  # how it is scored (mmpo.logps.sequence_logps)
        self.out, self.refresh_at, self.d = out, sorted(refresh_at), d
        self.table = None  # {(id, view): logp} once a cache is loaded

    def place(self, bf16: bool):
        """The frozen copy on the policy's device, sharded the same way (same structure, same shards).
        Under FSDP's bf16 policy its weights are stored in bf16: FSDP casts every weight to bf16 for
        compute, and a copy that never trains needs no fp32 master, so it takes half the memory
        for the same numbers (its buffers, such as rotary frequencies, stay as they are)."""
        if self.frozen is not None:
            if bf16 and self.d.enabled:
                for p in self.frozen.parameters():
                    p.data = p.data.to(torch.bfloat16)
            self.frozen.to(self.d.device)
            if self.d.enabled:
                distributed.shard(self.frozen, self.d, bf16=bf16)

    @torch.no_grad()
    def logps(self, batch: Batch, features=None) -> torch.Tensor:
        if not self.enabled:  # SFT: nothing to score, zeros keep one path through the loop
            return torch.zeros(batch.input_ids.shape[0], device=self.d.device)
        if self.table is not None:  # rows are view-major
            return torch.tensor([self.table[(i, v)] for v in batch.views for i in batch.ids])
        return live_logps(self.policy, self.frozen, batch, features, share_prefix=self.share_prefix, chunk=self.chunk)

    def cached(self, path: str, fp: str, dataset, batch_size: int, pad: int, autocast, num_workers: int = 0
               ) -> "Reference":
        """This reference read from the cache at ``path`` for ``dataset``'s views. When it is missing
        or stale (``fp`` differs), every example is scored once, each rank its share, in the training
        passes' precision (so log-ratios start at 0), and the table saved (rank 0)."""
        other = copy.copy(self)
        other.table = load_cache(path, fp)
        if other.table is not None:
            return other
        if self.d.main and os.path.exists(path):
            print(f"reference cache {path} does not match this model and data: rebuilding it")
        views = dataset.views

        def score(batch):
            logps = batch.split(self.logps(batch).float().cpu())
            return {(i, v): x for v in views for i, x in zip(batch.ids, logps[v].tolist())}
        was_training = self.policy.training
        self.policy.eval()
        with autocast:
            other.table = distributed.score_all(dataset, batch_size, self.d, lambda ex: collate(ex, views, pad), score,
                                                num_workers=num_workers, desc="reference cache")
        self.policy.train(was_training)
        if self.d.main:
            ids = sorted({i for i, _ in other.table})
            logps = torch.tensor([[other.table[(i, v)] for v in views] for i in ids])  # (n_examples, n_views)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            meta = {"fingerprint": fp, "ids": json.dumps(ids), "views": json.dumps(list(views))}
            with atomic_path(path) as tmp:
                save_file({"logps": logps}, tmp, metadata=meta)
        distributed.barrier(self.d)
        return other

    def refresh(self, step: int):
        """The policy of this stage boundary becomes the reference (under LoRA, a frozen snapshot
        of the adapters; else the frozen copy takes the weights)."""
        if self.frozen is None:
            lora.take_snapshot(self.policy)
        else:
            with torch.no_grad():
                for p_ref, p in zip(self.frozen.parameters(), self.policy.parameters()):  # same shards
                    p_ref.copy_(p)
        full = distributed.full_state(self.policy, trainable_only=True)  # every rank takes part in the gather
        if self.d.main:
            with atomic_path(self._path(step)) as tmp:  # straight to disk: a full model's weights are never held twice
                save_file({k: v.contiguous() for k, v in full.items()}, tmp)
        distributed.barrier(self.d)

    def restore(self, step: int):
        """A resumed run's reference: the one of the stage it was killed in (before the first
        boundary: the initial model, nothing to do)."""
        passed = [b for b in self.refresh_at if b < step]
        if passed:
            weights = load_file(self._path(max(passed)))
            module = self.policy if self.frozen is None else self.frozen
            set_model_state_dict(module, lora.snapshot_names(weights) if self.frozen is None else weights,
                                 options=StateDictOptions(full_state_dict=True, strict=False))

    def _path(self, step: int) -> str:
        return os.path.join(self.out, f"reference-{step}.safetensors")


@torch.no_grad()
def live_logps(policy, frozen, batch: Batch, image_features=None, *, share_prefix: bool, chunk: int) -> torch.Tensor:
    """Reference log-probs ``(N,)``: ``frozen`` if given, else the policy acting as the reference
    (``lora.as_reference``: adapters off, or their snapshot after a stage refresh)."""
    if frozen is not None:
        return sequence_logps(frozen, batch, share_prefix=share_prefix, chunk=chunk)[0]
    with lora.as_reference(policy):
        return sequence_logps(policy, batch, image_features, share_prefix, chunk)[0]


def load_cache(path: str, fp: str):
    """{(id, view): logp} if ``path`` holds a cache with fingerprint ``fp``, else None."""
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != fp:
                return None
            logps = f.get_tensor("logps")  # (n_examples, n_views)
    except (OSError, ValueError, RuntimeError, SafetensorError):  # missing, truncated or not safetensors: rebuild
        return None
    ids, views = json.loads(meta["ids"]), json.loads(meta["views"])
    return {(i, v): logps[r, c].item() for r, i in enumerate(ids) for c, v in enumerate(views)}
