"""What the run's caches are keyed by: the reference log-probs (``--ref-cache``) and the
curriculum's difficulty scores are reused only while the initial model, the data file and the
settings that shape them are the same; anything else gives another fingerprint, and a rebuild.
"""
import hashlib
import json

import torch


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
