"""The two things the bench times (``python -m mmpo.bench``): train.py's step with each variant's
settings as its inputs (``step_with``), and its floor, one bare forward + backward of the policy over
the positions that step needs (``make_floor``); with the two contexts a variant switches on, full
logits and activation checkpointing."""
import contextlib
import copy
import dataclasses

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmpo.distributed import Dist
from mmpo.logps import encode_images, logps_head, packed_forwards, prefix_sharing_supported, scored, supports_fused_images
from mmpo.models import image_path_frozen
from mmpo.reference import Reference


@contextlib.contextmanager
def full_logits(*models):
    """Logits at every position, the response ones then selected: scoring without
    ``logits_to_keep`` (what a plain loop does), to see what response-only logits save."""
    keep = {}

    def before(module, args, kwargs):
        kept = kwargs["logits_to_keep"]  # (kept,) columns; consecutive ones as a slice, a view as a plain loop takes
        consecutive = bool((kept.diff() == 1).all())
        keep[id(module)] = slice(int(kept[0]), int(kept[-1]) + 1) if consecutive else kept
        return args, {**kwargs, "logits_to_keep": 0}

    def after(module, args, kwargs, out):
        out.logits = out.logits[:, keep[id(module)]]  # (rows, kept, V) from (rows, T, V)
        return out
    hooks = [h for m in models for h in (m.register_forward_pre_hook(before, with_kwargs=True),
                                         m.register_forward_hook(after, with_kwargs=True))]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def checkpointing(model, on: bool):
    """--activation-checkpointing for what runs inside: each decoder layer's activations recomputed
    in the backward pass, as train.py's ``place`` sets it for a whole run."""
    if not on:
        yield
        return
    had_hooks = bool(getattr(model, "_require_grads_hooks", None))
    model.activation_checkpointing_enable({"use_reentrant": False})
    try:
        yield
    finally:
        model.activation_checkpointing_disable()
        if not had_hooks:  # enabling added a hook that makes the input embeddings require grad; disabling keeps it
            model.disable_input_require_grads()


def step_with(train, model, ref: Reference, batch, objective, options: dict, optimizer, params, cfg, s: dict,
              table, d: Dist):
    """train.py's ``train_step`` on ``batch``, the settings ``s`` (``ALL_ON``'s keys) as its inputs:
    prefix sharing and chunking in its Config (the reference scored alike), the shared vision pass,
    autocast; ``table``: the reference cache (with ``s["ref_cache"]``); full logits by hooks."""
    cfg = dataclasses.replace(cfg, prefix_sharing=s["share_prefix"], logps_chunk=s["chunk"])
    ref = copy.copy(ref)  # the steps take turns: each with its own view of the one reference
    ref.share_prefix, ref.chunk, ref.table = cfg.prefix_sharing, cfg.logps_chunk, table if s["ref_cache"] else None
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=s["bf16"])
    share_features = s["share_features"] and supports_fused_images(model) and image_path_frozen(model)
    models = [m for m in (model, ref.frozen) if m is not None]

    def step():
        with contextlib.nullcontext() if s["response_only"] else full_logits(*models), \
                checkpointing(model, s["checkpointing"]):
            return train.train_step(model, ref, [batch], objective, options, optimizer, params, cfg, autocast,
                                    share_features, d)
    return step


def make_floor(model, batch, params, share_prefix: bool, bf16: bool, chunk: int, recompute: bool = False):
    """One bare forward + backward of the policy over the token positions the step needs: the
    model called on the inputs ``sequence_logps`` builds for it (captured once: one call, or one
    per packed forward), after one vision pass per distinct image, its response log-probs computed
    as the step's are (``chunk``) and summed: no objective, no reference, no optimizer; with
    ``recompute``, under activation checkpointing."""
    calls = []  # per call of the model: its inputs, and the targets of its kept outputs and which are real

    @contextlib.contextmanager
    def capture_head(targets, needed):
        calls.append({"targets": targets, "needed": needed})
        yield
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: calls[-1].update(kwargs=kwargs), with_kwargs=True)
    with torch.no_grad():
        scored(model, batch, None, share_prefix, capture_head)
    hook.remove()
    # the image of each row each call takes: one per prefix group, or one per view
    shared = share_prefix and prefix_sharing_supported(model)
    rows = [[g[0] for g in groups] for groups in packed_forwards(batch)] if shared else [range(len(batch.image_index))]
    index = [batch.image_index[list(r)].tolist() for r in rows]
    assert len(index) == len(calls)
    fused = "mm_encoder_outputs" in calls[0]["kwargs"]
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16)

    def floor():
        with autocast, checkpointing(model, recompute):
            if fused:  # the frozen vision tower, once per distinct image (as the step needs at least)
                with torch.no_grad():
                    features = encode_images(model, batch)
            loss = 0
            for call, images in zip(calls, index):
                kwargs = dict(call["kwargs"])
                if fused:
                    kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=[features[i] for i in images])}
                if chunk:  # the step's output layer: the real response tokens' log-probs, chunk by chunk
                    with logps_head(model, chunk)(call["targets"], call["needed"]):
                        loss = loss + model(**kwargs).logits.sum()
                else:  # every kept output's logits at once
                    logits = model(**kwargs).logits
                    logps = F.log_softmax(logits.float(), -1).gather(2, call["targets"][..., None])[..., 0]
                    loss = loss + logps[call["needed"]].sum()
        loss.backward()
        for p in params:
            p.grad = None
        return loss.detach()  # the summed log-probs of every real response token
    return floor
