"""The reference model pi_ref, three ways, all giving the same numbers:

- under LoRA: the policy with its adapters switched off (no second copy of the weights);
- under full fine-tuning: a frozen copy of the initial model;
- from a cache: every reference log-prob computed once before training (``build_cache``),
  stored as safetensors keyed by example id and view, with a fingerprint of the model, the
  data and the perturbation settings; a cache whose fingerprint differs is rebuilt.
"""
import hashlib
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from mmpo import distributed, lora
from mmpo.data import Batch
from mmpo.distributed import Dist
from mmpo.logps import sequence_logps


@torch.no_grad()
def live_logps(policy, frozen, batch: Batch, image_features=None) -> torch.Tensor:
    """Reference log-probs ``(N,)`` of every row: ``frozen`` if given, else the policy with
    adapters disabled."""
    if frozen is not None:
        return sequence_logps(frozen, batch)[0]
    with lora.disabled(policy):
        return sequence_logps(policy, batch, image_features)[0]


@torch.no_grad()
def model_fingerprint(name: str, model) -> str:
    """The initial model's identity: its name, config, and a checksum of every weight (the sum
    and sum of squares of each tensor), so new weights under an old config are noticed too.
    Call it before adapters are added or weights sharded."""
    h = hashlib.sha256()
    h.update(name.encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    for n, p in model.state_dict().items():
        x = p.detach().double()
        h.update(f"{n}:{tuple(p.shape)}:{x.sum().item():.12e}:{x.pow(2).sum().item():.12e}".encode())
    return h.hexdigest()


def fingerprint(model_fp: str, data_path: str, settings: dict) -> str:
    """What reference log-probs (or difficulty scores) depend on: the initial model, the data
    file (which names its images), and how views are built (seed, m', lengths...)."""
    h = hashlib.sha256()
    h.update(model_fp.encode())
    with open(data_path, "rb") as f:
        h.update(f.read())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def load_cache(path: str, fp: str):
    """{(id, view): logp} if ``path`` holds a cache with fingerprint ``fp``, else None."""
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != fp:
                return None
            logps = f.get_tensor("logps")  # (n_examples, n_views)
    except (OSError, ValueError, RuntimeError):  # truncated or not a safetensors file: rebuild
        return None
    ids, views = json.loads(meta["ids"]), json.loads(meta["views"])
    return {(i, v): logps[r, c].item() for r, i in enumerate(ids) for c, v in enumerate(views)}


def build_cache(path: str, fp: str, policy, frozen, loader, views, d: Dist = Dist()) -> dict:
    """Score every example once with the reference (each rank its share), gather the scores on
    every rank, save them (rank 0), and return the lookup table."""
    table = {}
    for batch in tqdm(loader, desc="reference cache", disable=not d.main):
        if not distributed.all_ranks_have(len(batch), d):
            continue
        logps = batch.split(live_logps(policy, frozen, batch).float().cpu())
        for v in views:
            table.update({(i, v): x for i, x in zip(batch.ids, logps[v].tolist())})
    table = distributed.merge_dicts(table, d)
    if d.main:
        ids = sorted({i for i, _ in table})
        logps = torch.tensor([[table[(i, v)] for v in views] for i in ids])  # (n_examples, n_views)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        save_file({"logps": logps}, tmp, metadata={"fingerprint": fp, "ids": json.dumps(ids), "views": json.dumps(list(views))})
        os.replace(tmp, path)
    distributed.barrier(d)
    return table


def cached_logps(table: dict, batch: Batch) -> torch.Tensor:
    """Reference log-probs ``(N,)`` of ``batch`` read from the cache, rows view-major."""
    return torch.tensor([table[(i, v)] for v in batch.views for i in batch.ids])

