"""Summed response log-probabilities of every view of a batch, in one forward pass.

Four savings over scoring each view separately, all exact (the same log-probs and gradients):
- each distinct image goes through the vision tower once, even when several views share it
  (chosen, rejected, lang_biased... all see m), via transformers' ``mm_encoder_outputs``; under
  LoRA the policy and the reference passes share those features;
- logits are computed only at response positions (``logits_to_keep``), never for the prompt
  or the image tokens, so their memory does not grow with the number of image tokens;
- prefix sharing (``share_prefix``; train.py ``--no-prefix-sharing`` turns it off): the views
  that see the same image run their image + prompt prefix once, as one packed sequence
  [prefix][response 1]...[response K] under a block attention mask (see "prefix sharing" below).
  Why: the prefix is long (LLaVA-1.5: 576 + ~50 tokens, against answers of ~100-250). Positions
  per example, shared against unshared: DPO P + 2R vs 2(P + R), NaPO P + 4R vs 4(P + R),
  mDPO/MFPO 2P + 4R vs 3(P + R), SymMPO 2P + 6R vs 5(P + R) (all packed sequences of a batch
  have the same K, so m''s sequence carries one masked filler response, never projected onto
  the vocabulary). Wang & Hegde 2024 (https://arxiv.org/abs/2410.20305) do this for text DPO.
  It needs an attention kernel that takes a 4D mask (sdpa, eager: transformers' defaults); a
  model loaded with flash attention is scored unshared, with one warning;
- chunked log-probs (``chunk``; ``--logps-chunk``, 256 by default, 0 off; ``logps_head``): at
  vocabulary V = 32000 the response logits and their log-softmax are the largest tensors of a
  step (N * R * V floats, three times over with the gradient). The output layer instead projects
  ``chunk`` real response tokens at a time, keeps each target's log-prob, and recomputes the
  chunk's logits in the backward pass: one more output-layer matmul per chunk, for memory. 256
  rather than 1024: a 256 x 32000 chunk stays nearer the caches; on a 2-core CPU a step was 7.5%
  (DPO) and 11% (SymMPO) faster at the LLaVA-1.5 shape, with less memory.
"""
import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmpo.config import Config
from mmpo.data import Batch


def _pad_to(t: torch.Tensor, shape) -> torch.Tensor:
    if tuple(t.shape[1:]) == tuple(shape):
        return t
    out = t.new_zeros((t.shape[0], *shape))
    out[(slice(None), *(slice(0, n) for n in t.shape[1:]))] = t
    return out


def _cat_images(images: list[dict]) -> dict:
    """Concatenate per-image processor outputs along their leading dim. Tiled images (LLaVA-NeXT,
    Idefics3) can differ in their number of tiles: they are zero-padded as the processors do
    within one call, and the models skip the padding (by image_sizes, or all-zero tiles)."""
    out = {}
    for k in images[0] if images else ():
        ts = [im[k] for im in images]
        shape = [max(n) for n in zip(*(t.shape[1:] for t in ts))]
        out[k] = torch.cat([_pad_to(t, shape) for t in ts])
    return out


def _to(inputs: dict, device) -> dict:
    return {k: v.to(device) for k, v in inputs.items()}


def supports_fused_images(model) -> bool:
    """Whether the model takes precomputed image features (``mm_encoder_outputs``)."""
    return hasattr(model, "get_image_features") and "mm_encoder_outputs" in inspect.signature(model.forward).parameters


def encode_images(model, batch: Batch):
    """Features of each distinct image of the batch: a list of (tokens_i, hidden) tensors."""
    inputs = _to(_cat_images(batch.images), model.device)
    out = model.get_image_features(**inputs, return_dict=True)
    return list(out.pooler_output)


def _needs_own_positions(model) -> bool:
    # Models with multimodal rotary positions (Qwen2-VL...) compute them from the attention mask
    # themselves; the others count positions from 0 at the first column, which left padding
    # would shift, so we hand them positions that start at each row's first real token.
    inner = getattr(model, "model", model)
    return not (hasattr(inner, "compute_3d_position_ids") or hasattr(inner, "get_rope_index"))


def _image_inputs(model, batch: Batch, image_index: list[int], image_features, device) -> dict:
    """The image inputs of sequences whose images are ``image_index`` (into ``batch.images``):
    precomputed features where the model takes them (each image encoded once), else pixels."""
    images = [batch.images[i] for i in image_index]
    if not supports_fused_images(model):
        return _to(_cat_images(images), device)  # plain path: every sequence's image encoded again
    if image_features is None:
        image_features = encode_images(model, batch)
    per_seq = [image_features[i] for i in image_index]
    # non-pixel image inputs (e.g. image_grid_thw) still place the image tokens
    return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=per_seq)},
            **_to({k: v for k, v in _cat_images(images).items() if not k.startswith("pixel")}, device)}


def _positions(model, batch: Batch, device):
    """The position ids of every row as a full sequence (prompt + response): counted from each
    row's first real token, or the model's own multimodal rotary positions (3, N, P + R) for
    models that have them (Qwen2-VL...), which prefix sharing must hand over explicitly.
    None: the model computes them itself (the unshared path of such models)."""
    attention_mask = batch.attention_mask.to(device)
    if _needs_own_positions(model):
        return (attention_mask.cumsum(-1) - 1).clamp_min(0)
    inner = getattr(model, "model", model)
    images = _cat_images([batch.images[i] for i in batch.image_index.tolist()])
    grids = {k: v.to(device) for k, v in images.items() if k.endswith("grid_thw")}
    return inner.get_rope_index(batch.input_ids.to(device), attention_mask=attention_mask,
                                **_to(batch.extra, device), **grids)[0]


def scored(model, batch: Batch, image_features, share_prefix: bool, head) -> torch.Tensor:
    """One forward over every view of ``batch``; the output layer's values at the positions that
    predict each response token, ``(N, R, ...)`` rows as in ``batch``. ``head(targets, needed)``:
    a context in which the output layer gives what is wanted of the targets ``(B, T)`` it predicts
    (full logits, or their log-probs); ``needed`` ``(B, T)`` marks the targets that are real
    response tokens (not padding, not a packed sequence's filler block)."""
    if share_prefix and prefix_sharing_supported(model):
        return _shared_prefix_scored(model, batch, image_features, head)
    device = model.device
    input_ids = batch.input_ids.to(device)
    attention_mask = batch.attention_mask.to(device)
    kwargs = _to(batch.extra, device)
    if _needs_own_positions(model):
        kwargs["position_ids"] = _positions(model, batch, device)
    kwargs.update(_image_inputs(model, batch, batch.image_index.tolist(), image_features, device))
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    # the output at column j predicts the token at j + 1: keep columns P-1 .. P+R-2
    keep = torch.arange(P - 1, P + R - 1, device=device)
    with head(input_ids[:, P:P + R], batch.response_mask.to(device).bool()):
        return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False,
                     **kwargs).logits


@contextlib.contextmanager
def _logits_head(targets, needed):
    yield


def response_logits(model, batch: Batch, image_features=None, share_prefix: bool = Config.prefix_sharing):
    """Logits at the response positions only, ``(N, R, V)`` float32, and the targets ``(N, R)``."""
    logits = scored(model, batch, image_features, share_prefix, _logits_head)
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    return logits.float(), batch.input_ids[:, P:P + R].to(logits.device)


def logps_head(model, chunk: int):
    """A ``head`` for ``scored``: inside it, the model's output layer returns the log-probs of its
    targets ``(B, T, 1)`` instead of logits ``(B, T, V)``, ``chunk`` positions at a time, each
    chunk's logits recomputed in the backward pass (activation checkpointing of the output layer):
    full-vocabulary logits never exist for more than ``chunk`` positions at once. Only the
    ``needed`` targets are projected (the others get log-prob 0 and no gradient: they are masked
    out of every sum), so response padding and a packed sequence's filler block cost no
    vocabulary projection. Row-wise, so the values are those of one log-softmax over every
    position. The output layer is replaced for the forward only (its weights, names and sharding
    are untouched)."""
    layer = model.get_output_embeddings()

    @contextlib.contextmanager
    def head(targets, needed):
        project = layer.forward

        def one_chunk(h, t):  # (n, H), (n,) -> (n,)
            return F.log_softmax(project(h).float(), dim=-1).gather(1, t[:, None]).squeeze(1)

        def token_logps(hidden):  # (B, T, H) -> (B, T, 1)
            where = needed.reshape(-1).nonzero().squeeze(1)  # (n,) the real response tokens
            h, t = hidden.reshape(-1, hidden.shape[-1])[where], targets.reshape(-1)[where]
            parts = [checkpoint(one_chunk, h[i:i + chunk], t[i:i + chunk], use_reentrant=False)
                     for i in range(0, len(t), chunk)]
            out = torch.zeros(targets.numel(), dtype=torch.float32, device=hidden.device)
            return out.index_put((where,), torch.cat(parts) if parts else out[:0]).view(*targets.shape, 1)
        layer.forward = token_logps
        try:
            yield
        finally:
            del layer.forward  # the class's forward again
    return head


# ---- prefix sharing ----------------------------------------------------------------------------
#
# The views of an example that see the same image share their prefix (image tokens + prompt):
# DPO's chosen and rejected, mDPO's three views on two images, SymMPO's five on two. Instead of
# one sequence per view, each distinct prefix becomes one packed sequence
#
#     [prefix (P, left-padded)] [response 1 (R)] [response 2 (R)] ... [response K (R)]
#
# with a block attention mask: the prefix is causal, and each response attends to the real prefix
# tokens and causally to itself, never to another response. Each response keeps the positions it
# has as a full sequence, so every attention score, and so every log-prob and gradient, is the
# one of the unshared pass; the language model processes P + K * R positions instead of
# K * (P + R). A mask rather than a key-value cache: one ordinary forward, so activation
# checkpointing, FSDP and autocast work unchanged, and the gradient reaches the prefix through
# the attention like any other.

def prefix_groups(batch: Batch) -> list[list[int]]:
    """The rows of ``batch`` grouped by the prefix they share (rows with the same image slot of
    the same example have the same image and prompt), in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for row, image in enumerate(batch.image_index.tolist()):
        groups.setdefault(image, []).append(row)
    return list(groups.values())


def lm_positions(batch: Batch, share_prefix: bool) -> int:
    """Token positions the language model processes for ``batch`` (padding included)."""
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    if not share_prefix:
        return len(batch.image_index) * (P + R)
    groups = prefix_groups(batch)
    return len(groups) * (P + max(map(len, groups)) * R)


_warned: set[str] = set()


def prefix_sharing_supported(model) -> bool:
    """Whether a block attention mask reaches this model's attention as given: the sdpa and eager
    kernels take any 4D mask; flash attention takes none (it is then switched off, said once)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if impl in ("sdpa", "eager"):
        return True
    if impl not in _warned:
        _warned.add(impl)
        print(f"warning: prefix sharing needs sdpa or eager attention, the model uses {impl}: scoring every view "
              f"as a full sequence (as --no-prefix-sharing)")
    return False


def block_mask(prefix_mask: torch.Tensor, k: int, R: int) -> torch.Tensor:
    """The attention mask of packed sequences, ``(G, 1, T, T)`` bool (True: may attend), with
    T = P + k * R. ``prefix_mask`` ``(G, P)``: the real (not padding) prefix tokens. Every
    position also sees itself, so padding never attends to nothing (which would give NaN)."""
    G, P = prefix_mask.shape
    T = P + k * R
    block = torch.cat([torch.full((P,), -1), torch.arange(k).repeat_interleave(R)]).to(prefix_mask.device)  # (T,)
    t = torch.arange(T, device=prefix_mask.device)
    causal = t[None, :] <= t[:, None]  # (T, T) key <= query
    to_prefix = (block[None, :] == -1) & ((block[:, None] != -1) | causal)  # any response sees the whole prefix
    own_block = (block[None, :] == block[:, None]) & (block[:, None] != -1) & causal
    real_key = torch.cat([prefix_mask.bool(), prefix_mask.new_ones(G, k * R, dtype=torch.bool)], 1)  # (G, T)
    allowed = (to_prefix | own_block)[None] & real_key[:, None, :]
    return (allowed | torch.eye(T, dtype=torch.bool, device=prefix_mask.device)[None])[:, None]


def _shared_prefix_scored(model, batch: Batch, image_features, head):
    device = model.device
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    groups = prefix_groups(batch)
    G, K = len(groups), max(map(len, groups))
    T = P + K * R
    first = torch.tensor([g[0] for g in groups])
    input_ids = batch.input_ids.to(device)
    # each row's column in the packed layout: its prefix from the group's first row, its response in block j
    src_row = first[:, None].expand(G, T).clone()  # (G, T) which row each packed column comes from
    src_col = torch.arange(T).repeat(G, 1)  # (G, T) and which of its columns
    group_of, block_of = torch.zeros(len(batch.image_index), dtype=torch.long), torch.zeros(len(batch.image_index), dtype=torch.long)
    for gi, rows in enumerate(groups):
        for j in range(K):  # a group with fewer views repeats its last response: masked out, never read
            src_row[gi, P + j * R:P + (j + 1) * R] = rows[min(j, len(rows) - 1)]
            src_col[gi, P + j * R:P + (j + 1) * R] = torch.arange(P, P + R)
        for j, r in enumerate(rows):
            group_of[r], block_of[r] = gi, j
    src_row, src_col = src_row.to(device), src_col.to(device)
    packed = input_ids[src_row, src_col]  # (G, T)
    kwargs = {k: v.to(device)[src_row, src_col] for k, v in batch.extra.items()}
    kwargs["position_ids"] = _positions(model, batch, device)[..., src_row, src_col]  # (G, T), or (3, G, T)
    kwargs.update(_image_inputs(model, batch, batch.image_index[first].tolist(), image_features, device))
    mask = block_mask(batch.attention_mask[first, :P].to(device), K, R)
    if getattr(model.config, "_attn_implementation", "eager") == "eager":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    # the outputs that predict block j's tokens: column P-1 (the prefix's last, for its first
    # token: kept once per block), then block j's columns 0 .. R-2. Output jR + r predicts packed column P + jR + r.
    keep = torch.cat([torch.cat([torch.tensor([P - 1]), torch.arange(P + j * R, P + (j + 1) * R - 1)])
                      for j in range(K)]).to(device)  # (K * R,)
    cols = (block_of[:, None] * R + torch.arange(R)[None]).to(device)  # (N, R) each row's outputs in its group's
    group_of = group_of.to(device)
    needed = torch.zeros(G, K * R, dtype=torch.bool, device=device)  # filler blocks and padding: False
    needed[group_of[:, None], cols] = batch.response_mask.to(device).bool()
    with head(packed[:, P:], needed):
        out = model(input_ids=packed, attention_mask=mask, logits_to_keep=keep, use_cache=False, **kwargs).logits
    return out[group_of[:, None], cols]  # (N, R, ...)


def sequence_logps(model, batch: Batch, image_features=None, share_prefix: bool = Config.prefix_sharing,
                   chunk: int = Config.logps_chunk):
    """Summed log pi(response | image, prompt) of every row of ``batch``.

    Args:
        model: an image-text-to-text model (possibly LoRA-wrapped or FSDP-sharded).
        batch: a ``mmpo.data.Batch``.
        image_features: the output of ``encode_images`` to reuse (e.g. the vision tower is
            frozen, so the policy and the reference share it); computed here when None.
        share_prefix: run each image + prompt prefix once for all its views (exact; the
            language model processes P + K*R positions per prefix instead of K*(P + R)).
        chunk: positions whose full-vocabulary logits exist at once (recomputed in the backward
            pass); 0: all at once (then the logits of every response position are held).
    Returns:
        logps ``(N,)`` summed over response tokens, lengths ``(N,)`` response token counts.
    """
    if chunk > 0:
        token_logps = scored(model, batch, image_features, share_prefix, logps_head(model, chunk))[..., 0]
    else:
        logits, targets = response_logits(model, batch, image_features, share_prefix)  # (N, R, V), (N, R)
        token_logps = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)  # (N, R)
    mask = batch.response_mask.to(token_logps.device)
    return (token_logps * mask).sum(-1), mask.sum(-1)


@torch.no_grad()
def response_entropy(model, batch: Batch) -> torch.Tensor:
    """Mean over response tokens of the predictive entropy H = -sum_v p log p, per row ``(N,)``
    (MFPO's difficulty score: how unsure the model is while reading the answer)."""
    logits, _ = response_logits(model, batch)
    logp = F.log_softmax(logits, dim=-1)
    h = -(logp.exp() * logp).sum(-1)  # (N, R)
    mask = batch.response_mask.to(h.device)
    return (h * mask).sum(-1) / mask.sum(-1).clamp_min(1)
