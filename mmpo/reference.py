"""The reference model pi_ref: the one home of everything a run does with it.

Three forms, all giving the same numbers: under LoRA, the policy with its adapters off (no second
copy of the weights); under full fine-tuning, a frozen copy of the initial model; or a cache of
every reference log-prob, computed once before training and stored as safetensors keyed by example
id and view, with a fingerprint of the model, the data and the view settings (stale: rebuilt). Why
a cache: the frozen copy costs its weights' memory and one forward per step (step / floor 1.3-1.5
with it, 1.0-1.2 cached, ``python -m mmpo.bench``). SFT has none (``enabled=False``: zeros).

MFPO's iterative alignment makes the policy of each curriculum stage boundary the new reference
(``refresh``), saved as ``OUT/reference-<step>.safetensors`` for a resumed run (``restore``).
"""
import copy
import hashlib
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from mmpo import checkpoint, distributed, lora
from mmpo.config import Config
from mmpo.data import Batch, collate
from mmpo.distributed import Dist
from mmpo.files import atomic_path
from mmpo.logps import sequence_logps


class Reference:
    """pi_ref of one run: ``logps(batch, features)`` ``(N,)`` from the cache when one is loaded, else
    live. ``refresh_at``: the steps where the policy becomes the reference."""

    def __init__(self, policy, frozen=None, *, enabled: bool = True, out: str = "", refresh_at=(),
                 share_prefix: bool = Config.prefix_sharing, chunk: int = Config.logps_chunk, d: Dist = Dist()):
        self.policy, self.frozen, self.enabled = policy, frozen, enabled
        self.share_prefix, self.chunk = share_prefix, chunk  # how it is scored (mmpo.logps.sequence_logps)
        self.out, self.refresh_at, self.d = out, sorted(refresh_at), d
        self.table = None  # {(id, view): logp} once a cache is loaded

    @classmethod
    def for_run(cls, policy, cfg, enabled: bool, d: Dist = Dist()) -> "Reference":
        """The reference ``cfg`` asks for. Call it before the policy is sharded (a frozen copy is
        copied whole, then sharded like the policy by ``place``)."""
        frozen = None
        if enabled and cfg.lora_rank == 0 and not cfg.ref_cache:
            frozen = copy.deepcopy(policy).eval().requires_grad_(False)
        return cls(policy, frozen, enabled=enabled, out=cfg.out, share_prefix=cfg.prefix_sharing,
                   chunk=cfg.logps_chunk, d=d)

    def place(self, bf16: bool):
        """The frozen copy on the policy's device, sharded the same way (same structure, same shards)."""
        if self.frozen is not None:
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
        """This reference read from the cache at ``path`` for ``dataset``'s views, built first (in
        the training passes' precision, so log-ratios start at 0) when missing or stale."""
        table = load_cache(path, fp)
        if table is None:
            if self.d.main and os.path.exists(path):
                print(f"reference cache {path} does not match this model and data: rebuilding it")
            loader = distributed.share_loader(dataset, batch_size, self.d, lambda ex: collate(ex, dataset.views, pad),
                                              num_workers)
            was_training = self.policy.training
            self.policy.eval()
            with autocast:
                table = build_cache(path, fp, self.policy, self.frozen, loader, dataset.views, self.d,
                                    share_prefix=self.share_prefix, chunk=self.chunk)
            self.policy.train(was_training)
        other = copy.copy(self)
        other.table = table
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
        checkpoint.save_reference(self._path(step), self.policy, self.d)

    def restore(self, step: int):
        """A resumed run's reference: the one of the stage it was killed in (before the first
        boundary: the initial model, nothing to do)."""
        passed = [b for b in self.refresh_at if b < step]
        if passed and self.frozen is None:
            checkpoint.load_reference(self._path(max(passed)), self.policy, lora.snapshot_names)
        elif passed:
            checkpoint.load_reference(self._path(max(passed)), self.frozen)

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


@torch.no_grad()
def model_fingerprint(name: str, model) -> str:
    """The initial model's identity: its name, config, and each weight's sum and sum of squares
    (new weights under an old config are noticed too). Call it before adapters or sharding."""
    h = hashlib.sha256()
    h.update(name.encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    for n, p in model.state_dict().items():
        x = p.detach().double()
        h.update(f"{n}:{tuple(p.shape)}:{x.sum().item():.12e}:{x.pow(2).sum().item():.12e}".encode())
    return h.hexdigest()


def cache_fingerprint(model_fp: str, dataset, cfg) -> str:
    """``fingerprint`` of ``dataset``'s reference log-probs: m' and its randomness, lengths, precision."""
    settings = {"views": dataset.views, "seed": cfg.seed, "noise_step": dataset.noise_step,
                "max_length": cfg.max_length, "dtype": cfg.dtype, "noise_on": "normalized pixels",
                "corruption": cfg.m_prime}  # m' under its first name: caches written before the rename still match
    return fingerprint(model_fp, dataset.path, settings)


def fingerprint(model_fp: str, data_path: str, settings: dict) -> str:
    """What reference log-probs (or difficulty scores) depend on: the initial model, the data file
    (which names its images), and how views are built (``settings``)."""
    h = hashlib.sha256()
    h.update(model_fp.encode())
    with open(data_path, "rb") as f:
        h.update(f.read())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


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


def build_cache(path: str, fp: str, policy, frozen, loader, views, d: Dist, *, share_prefix: bool, chunk: int) -> dict:
    """Score every example once (each rank its share), gather the table on every rank, save it (rank 0)."""
    table = {}
    for batch in tqdm(loader, desc="reference cache", disable=not d.main):
        if not distributed.all_ranks_have(len(batch), d):
            continue
        logps = batch.split(live_logps(policy, frozen, batch, share_prefix=share_prefix, chunk=chunk).float().cpu())
        for v in views:
            table.update({(i, v): x for i, x in zip(batch.ids, logps[v].tolist())})
    table = distributed.merge_dicts(table, d)
    if d.main:
        ids = sorted({i for i, _ in table})
        logps = torch.tensor([[table[(i, v)] for v in views] for i in ids])  # (n_examples, n_views)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        meta = {"fingerprint": fp, "ids": json.dumps(ids), "views": json.dumps(list(views))}
        with atomic_path(path) as tmp:
            save_file({"logps": logps}, tmp, metadata=meta)
    distributed.barrier(d)
    return table
