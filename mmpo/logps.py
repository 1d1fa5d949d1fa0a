"""Summed response log-probabilities of every view of a batch, in one forward pass.

Two savings over scoring each view separately:
- each distinct image goes through the vision tower once, even when several views share it
  (chosen, rejected, lang_biased... all see m), via transformers' ``mm_encoder_outputs``;
- logits are computed only at response positions (``logits_to_keep``), never for the prompt
  or the image tokens, so their memory does not grow with the number of image tokens.
"""
import inspect

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

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


def response_logits(model, batch: Batch, image_features=None):
    """Logits at the response positions only: ``(N, R, V)`` float32, and the targets ``(N, R)``."""
    device = model.device
    input_ids = batch.input_ids.to(device)
    attention_mask = batch.attention_mask.to(device)
    kwargs = _to(batch.extra, device)
    if _needs_own_positions(model):
        kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    rows_images = [batch.images[i] for i in batch.image_index.tolist()]
    if supports_fused_images(model):
        if image_features is None:
            image_features = encode_images(model, batch)
        per_row = [image_features[i] for i in batch.image_index.tolist()]
        kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=per_row)}
        # non-pixel image inputs (e.g. image_grid_thw) still place the image tokens
        kwargs.update(_to({k: v for k, v in _cat_images(rows_images).items() if not k.startswith("pixel")}, device))
    else:
        kwargs.update(_to(_cat_images(rows_images), device))  # plain path: every row's image re-encoded
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    # logits at column j predict the token at j + 1: keep columns P-1 .. P+R-2
    keep = torch.arange(P - 1, P + R - 1, device=device)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False, **kwargs)
    return out.logits.float(), input_ids[:, P:P + R]


def sequence_logps(model, batch: Batch, image_features=None):
    """Summed log pi(response | image, prompt) of every row of ``batch``.

    Args:
        model: an image-text-to-text model (possibly LoRA-wrapped or FSDP-sharded).
        batch: a ``mmpo.data.Batch``.
        image_features: the output of ``encode_images`` to reuse (e.g. the vision tower is
            frozen, so the policy and the reference share it); computed here when None.
    Returns:
        logps ``(N,)`` summed over response tokens, lengths ``(N,)`` response token counts.
    """
    logits, targets = response_logits(model, batch, image_features)  # (N, R, V), (N, R)
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
