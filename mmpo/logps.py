"""Summed response log-probabilities of every view of a batch, in one forward pass.

Four savings over scoring each view on its own, all exact (the same log-probs and gradients):
- each distinct image goes through the vision tower once, however many views see it, via
  transformers' ``mm_encoder_outputs`` (under LoRA the policy and reference passes share it);
- logits only at response positions (``logits_to_keep``), never at the prompt or image tokens;
- prefix sharing (``share_prefix``; ``--no-prefix-sharing``): the views that see the same image
  run their image + prompt prefix once, as one packed sequence

      [prefix (P, left-padded)] [response 1 (R)] [response 2 (R)] ... [response K (R)]

  under a block attention mask (``block_mask``), each response keeping the positions it has as a
  full sequence: every log-prob and gradient is the unshared one. The prefix is long (LLaVA-1.5:
  576 + ~50 tokens, answers ~100-250): per example DPO runs P + 2R positions instead of 2(P + R),
  NaPO P + 4R vs 4(P + R), mDPO/MFPO 2P + 3R vs 3(P + R), SymMPO 2P + 5R vs 5(P + R): the groups
  with as many views run as one forward (m''s groups apart: two forwards for mDPO, MFPO and
  SymMPO), so no sequence carries a filler response. A mask, not a key-value cache: ordinary
  forwards, so activation checkpointing, FSDP and autocast work unchanged. Wang & Hegde 2024 (https://arxiv.org/abs/2410.20305) do this for text DPO. It needs
  sdpa or eager attention (transformers' defaults; under flash attention views are scored unshared);
- chunked log-probs (``chunk``; ``--logps-chunk``, 256 by default, 0 off): at V = 32000 the
  response logits and their log-softmax are a step's largest tensors (N * R * V floats, three times
  over with the gradient). ``logps_head`` replaces the output layer for the scoring forward only,
  projecting ``chunk`` real response tokens at a time and recomputing each chunk's logits in the
  backward pass. 256, not 1024: a 256 x 32000 chunk stays nearer the caches (the step times that
  chose it: mmpo/bench/RESULTS.md).
"""
import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmpo.constants import LOGPS_CHUNK, SHARE_PREFIX
from mmpo.data import Batch


def _cat_images(images: list[dict]) -> dict:
    """Per-image processor outputs concatenated along dim 0. Tiled images (LLaVA-NeXT, Idefics3) can
    differ in their number of tiles: zero-padded at the end as the processors do within one call
    (the models skip the padding, by image_sizes or all-zero tiles)."""
    out = {}
    for k in images[0] if images else ():
        ts = [im[k] for im in images]
        shape = [max(n) for n in zip(*(t.shape[1:] for t in ts))]
        # F.pad takes (before, after) pairs from the last dim backwards
        out[k] = torch.cat([F.pad(t, [p for n, m in zip(t.shape[:0:-1], shape[::-1]) for p in (0, m - n)]) for t in ts])
    return out


def _to(inputs: dict, device) -> dict:
    return {k: v.to(device) for k, v in inputs.items()}


def supports_fused_images(model) -> bool:
    """Whether the model takes precomputed image features (``mm_encoder_outputs``)."""
    return hasattr(model, "get_image_features") and "mm_encoder_outputs" in inspect.signature(model.forward).parameters


def encode_images(model, batch: Batch):
    """Features of each distinct image of the batch: a list of (tokens_i, hidden) tensors (none
    for a batch of text-only rows)."""
    if not batch.images:
        return []
    inputs = _to(_cat_images(batch.images), model.device)
    return list(model.get_image_features(**inputs, return_dict=True).pooler_output)


def _needs_own_positions(model) -> bool:
    # Models with multimodal rotary positions (Qwen2-VL...) compute them from the attention mask
    # themselves; the others count positions from 0 at the first column, which left padding
    # would shift, so we hand them positions that start at each row's first real token.
    inner = getattr(model, "model", model)
    return not (hasattr(inner, "compute_3d_position_ids") or hasattr(inner, "get_rope_index"))


def _image_inputs(model, batch: Batch, image_index: list[int], image_features, device) -> dict:
    """The image inputs of sequences whose images are ``image_index`` (into ``batch.images``; -1,
    a text-only row, has none): precomputed features where the model takes them, else pixels
    (encoded again per sequence)."""
    image_index = [i for i in image_index if i >= 0]
    images = [batch.images[i] for i in image_index]
    if not images:
        return {}
    if not supports_fused_images(model):
        return _to(_cat_images(images), device)
    if image_features is None:
        image_features = encode_images(model, batch)
    per_seq = [image_features[i] for i in image_index]
    # non-pixel image inputs (e.g. image_grid_thw) still place the image tokens
    return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=per_seq)},
            **_to({k: v for k, v in _cat_images(images).items() if not k.startswith("pixel")}, device)}


def _positions(model, batch: Batch, device):
    """Every row's position ids as a full sequence, ``(N, P + R)``: counted from the row's first
    real token, or the model's own multimodal rotary positions ``(3, N, P + R)`` (Qwen2-VL...),
    which prefix sharing must hand over explicitly."""
    attention_mask = batch.attention_mask.to(device)
    if _needs_own_positions(model):
        return (attention_mask.cumsum(-1) - 1).clamp_min(0)
    images = _cat_images([batch.images[i] for i in batch.image_index.tolist() if i >= 0])
    grids = {k: v.to(device) for k, v in images.items() if k.endswith("grid_thw")}
    return getattr(model, "model", model).get_rope_index(batch.input_ids.to(device), attention_mask=attention_mask,
                                                         **_to(batch.extra, device), **grids)[0]


def scored(model, batch: Batch, image_features, share_prefix: bool, head) -> torch.Tensor:
    """One forward over every view of ``batch``: the output layer's values at the positions that
    predict each response token, ``(N, R, ...)`` rows as in ``batch``. ``head(targets, needed)`` is
    a context around that forward that decides what the output layer gives: ``logps_head`` replaces
    it for this forward only (the log-probs of ``targets``, ``(B, T, 1)``), ``_keep_logits`` leaves
    it (logits ``(B, T, V)``). ``needed`` ``(B, T)``: the real response tokens among ``targets``."""
    if share_prefix and prefix_sharing_supported(model):
        return _shared_prefix_scored(model, batch, image_features, head)
    device = model.device
    input_ids = batch.input_ids.to(device)
    kwargs = _to(batch.extra, device)
    if _needs_own_positions(model):
        kwargs["position_ids"] = _positions(model, batch, device)
    kwargs.update(_image_inputs(model, batch, batch.image_index.tolist(), image_features, device))
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    keep = torch.arange(P - 1, P + R - 1, device=device)  # the output at column j predicts the token at j + 1
    # under logps_head the output layer is replaced for this forward only
    with head(input_ids[:, P:P + R], batch.response_mask.to(device).bool()):
        return model(input_ids=input_ids, attention_mask=batch.attention_mask.to(device), logits_to_keep=keep,
                     use_cache=False, **kwargs).logits


def _keep_logits(targets, needed):
    """A ``head`` that leaves the output layer as it is: full logits."""
    return contextlib.nullcontext()


def logps_head(model, chunk: int):
    """A ``head`` for ``scored``: inside it the output layer is replaced, for this forward only,
    by one that returns the log-probs of its targets ``(B, T, 1)`` instead of logits ``(B, T, V)``
    (its weights, names and sharding untouched; leaving the context restores the class's forward).
    Only the ``needed`` targets are projected, ``chunk`` at a time, each chunk's logits recomputed
    in the backward pass (activation checkpointing); the others get log-prob 0 and no gradient
    (they are masked out of every sum). Row-wise, so the values are those of one log-softmax."""
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
        layer.forward = token_logps  # an instance attribute shadows the class's forward
        try:
            yield
        finally:
            del layer.forward
    return head


# ---- prefix sharing (the layout is in the module docstring) -------------------------------------

def prefix_groups(batch: Batch) -> list[list[int]]:
    """The rows of ``batch`` grouped by the prefix they share (the same image slot of the same
    example: the same image and prompt), in order of first appearance. A text-only row (image -1)
    shares only with its own example's other views (rows are view-major)."""
    groups: dict[int | tuple, list[int]] = {}
    for row, image in enumerate(batch.image_index.tolist()):
        groups.setdefault(image if image >= 0 else ("text", row % len(batch.ids)), []).append(row)
    return list(groups.values())


_warned: set[str] = set()


def packed_forwards(batch: Batch) -> list[list[list[int]]]:
    """``prefix_groups`` split by size: the groups each packed forward takes (one per number of
    views), in order of first appearance."""
    by_size: dict[int, list[list[int]]] = {}
    for rows in prefix_groups(batch):
        by_size.setdefault(len(rows), []).append(rows)
    return list(by_size.values())


def prefix_sharing_supported(model) -> bool:
    """Whether a block attention mask reaches this model's attention as given: sdpa and eager take
    any 4D mask, flash attention none (prefix sharing is then off, said once)."""
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
    device = prefix_mask.device
    block = torch.cat([torch.full((P,), -1), torch.arange(k).repeat_interleave(R)]).to(device)  # (T,) -1: the prefix
    t = torch.arange(len(block), device=device)
    # causal, and a key in the prefix or in the query's own block (the prefix precedes every response)
    allowed = (t[None, :] <= t[:, None]) & ((block[None, :] == -1) | (block[None, :] == block[:, None]))  # (T, T)
    real_key = torch.cat([prefix_mask.bool(), prefix_mask.new_ones(G, k * R, dtype=torch.bool)], 1)  # (G, T)
    return ((allowed & real_key[:, None, :]) | torch.eye(len(t), dtype=torch.bool, device=device))[:, None]


def _shared_prefix_scored(model, batch: Batch, image_features, head):
    """Prefix sharing: the groups with k views each run as one packed forward of k response blocks
    (mDPO's image groups with 2, its m' groups with 1), so no group carries a filler block. Rows
    come back in ``batch``'s order, ``(N, R, ...)``."""
    device = model.device
    positions = _positions(model, batch, device)
    if image_features is None and supports_fused_images(model):  # once for every forward below
        image_features = encode_images(model, batch)
    order, parts = [], []
    for groups in packed_forwards(batch):
        parts.append(_packed_scored(model, batch, groups, positions, image_features, head))
        order += [row for rows in groups for row in rows]
    where = torch.empty(len(order), dtype=torch.long)
    where[torch.tensor(order)] = torch.arange(len(order))  # row i of the batch is row where[i] of the parts
    return torch.cat(parts)[where.to(device)]


def _packed_scored(model, batch: Batch, groups: list[list[int]], positions, image_features, head):
    """One forward over ``groups`` (each of the same K rows of ``batch``), packed as the module
    docstring lays out: their rows' outputs, ``(G * K, R, ...)``, group by group."""
    device = model.device
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    G, K = len(groups), len(groups[0])
    # which row each packed column comes from: the group's first for the prefix, the j-th view for block j ...
    views = torch.tensor(groups)  # (G, K)
    src_row = torch.cat([views[:, :1].expand(G, P), views.repeat_interleave(R, 1)], 1).to(device)  # (G, T)
    # ... and which of its columns
    src_col = torch.cat([torch.arange(P), torch.arange(P, P + R).repeat(K)]).expand(G, -1).to(device)  # (G, T)
    packed = batch.input_ids.to(device)[src_row, src_col]  # (G, T)
    kwargs = {k: v.to(device)[src_row, src_col] for k, v in batch.extra.items()}
    kwargs["position_ids"] = positions[..., src_row, src_col]  # (G, T), or (3, G, T)
    first = views[:, 0]
    kwargs.update(_image_inputs(model, batch, batch.image_index[first].tolist(), image_features, device))
    mask = block_mask(batch.attention_mask[first, :P].to(device), K, R)
    if getattr(model.config, "_attn_implementation", "eager") == "eager":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    # output j * R + r predicts packed column P + j * R + r; a block's first token is predicted by
    # the prefix's last column (kept once per block), not by the block before it
    o = torch.arange(K * R, device=device)
    keep = torch.where(o % R == 0, P - 1, P + o - 1)  # (K * R,)
    needed = batch.response_mask[views.reshape(-1)].to(device).bool().reshape(G, K * R)  # padding: False
    with head(packed[:, P:], needed):  # under logps_head the output layer is replaced for this forward only
        out = model(input_ids=packed, attention_mask=mask, logits_to_keep=keep, use_cache=False, **kwargs).logits
    return out.reshape(G * K, R, *out.shape[2:])


def sequence_logps(model, batch: Batch, image_features=None, share_prefix: bool = SHARE_PREFIX,
                   chunk: int = LOGPS_CHUNK):
    """Summed log pi(response | image, prompt) of every row of ``batch``, ``(N,)``, and the rows'
    response lengths ``(N,)``. ``model``: image-text-to-text, possibly LoRA-wrapped or FSDP-sharded.
    ``image_features``: ``encode_images``'s output to reuse (the policy and the reference share it
    when the vision path is frozen), computed here when None. ``share_prefix`` and ``chunk`` (0: all
    logits at once) as in the module docstring."""
    if chunk > 0:
        # the output layer is replaced for this forward only: it gives each target's log-prob (N, R, 1)
        token_logps = scored(model, batch, image_features, share_prefix, logps_head(model, chunk))[..., 0]
    else:
        logits = scored(model, batch, image_features, share_prefix, _keep_logits).float()  # (N, R, V)
        P, R = batch.prompt_len, batch.response_mask.shape[1]
        targets = batch.input_ids[:, P:P + R].to(logits.device)  # (N, R)
        token_logps = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)  # (N, R)
    mask = batch.response_mask.to(token_logps.device)
    return (token_logps * mask).sum(-1), mask.sum(-1)


@torch.no_grad()
def response_entropy(model, batch: Batch) -> torch.Tensor:
    """Mean over response tokens of the predictive entropy H = -sum_v p log p, per row ``(N,)``
    (MFPO's difficulty score: how unsure the model is while reading the answer)."""
    logp = F.log_softmax(scored(model, batch, None, SHARE_PREFIX, _keep_logits).float(), dim=-1)  # (N, R, V)
    h = -(logp.exp() * logp).sum(-1)  # (N, R)
    mask = batch.response_mask.to(h.device)
    return (h * mask).sum(-1) / mask.sum(-1).clamp_min(1)
