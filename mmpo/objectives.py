"""The five preference objectives (and plain SFT), as functions of per-view log-probabilities.

Every objective takes ``policy`` and ``ref``: dicts mapping a view name (METHODS.md) to the
*summed* response log-probability of each example, shape ``(batch,)``. It returns
``(loss, metrics)``: the unreduced per-example loss ``(batch,)`` and a dict of detached scalars.

    lr(v)  = policy[v] - ref[v]          log-ratio; the implicit reward is beta * lr(v)

``OBJECTIVES`` maps each name to its function and the views it needs, so the training loop can
ask an objective what to score. Nothing here knows about models or data: copy any one function.
"""
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

Logps = dict[str, torch.Tensor]


def _lr(policy: Logps, ref: Logps, view: str) -> torch.Tensor:
    # The reference is a constant of the objective: no gradient may flow into it.
    return policy[view] - ref[view].detach()


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    """Batch mean of a detached tensor, averaged over all ranks so every rank agrees."""
    m = x.detach().float().mean()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(m, op=dist.ReduceOp.SUM)
        m = m / dist.get_world_size()
    return m


def _reward_metrics(policy: Logps, ref: Logps, beta: float, views) -> dict:
    out = {}
    for v in views:
        out[f"rewards/{v}"] = (beta * _lr(policy, ref, v)).detach().mean()
        out[f"logps/{v}"] = policy[v].detach().mean()
    return out


def dpo(policy: Logps, ref: Logps, *, beta: float = 0.1):
    """DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290, eq. 7).

    Prefer y_w over y_l under the same image: L = -log sig(beta * (lr(chosen) - lr(rejected))).
    This is the baseline that, on image+text data, can learn the preference from text alone.

    Args:
        policy, ref: summed log-probs of views ``chosen`` and ``rejected``, each ``(batch,)``.
        beta: inverse temperature of the implicit reward.
    Returns:
        loss ``(batch,)`` and metrics (rewards/*, logps/*, rewards/margins, rewards/accuracies).
    """
    h = _lr(policy, ref, "chosen") - _lr(policy, ref, "rejected")  # (batch,)
    loss = -F.logsigmoid(beta * h)
    metrics = _reward_metrics(policy, ref, beta, ("chosen", "rejected"))
    metrics["rewards/margins"] = (beta * h).detach().mean()
    metrics["rewards/accuracies"] = (h > 0).float().mean()
    return loss, metrics


def mdpo(policy: Logps, ref: Logps, *, beta: float = 0.1, delta: float = 0.0,
         response: bool = True, conditional: bool = True, anchor: bool = True,
         rejected_anchor: bool = False, corrupt_anchor: bool = False):
    """mDPO (Wang et al. 2024, https://arxiv.org/abs/2406.11839, sec. 3, L_MDPO).

    DPO can ignore the image. mDPO adds a *conditional* pair where only the image changes
    (same answer y_w on the real image m beats it on a corrupted image m'), and a reward
    *anchor* that keeps the chosen reward above delta so its likelihood does not fall:

        L = -log sig(beta*h_resp) - log sig(beta*h_image) - log sig(beta*lr(chosen) - delta)
        h_resp = lr(chosen) - lr(rejected),  h_image = lr(chosen) - lr(chosen_on_corrupt)

    Args:
        policy, ref: views ``chosen``, ``rejected``, ``chosen_on_corrupt``, each ``(batch,)``.
        beta: inverse temperature. delta: the anchor value.
        response, conditional, anchor: switch each term (the ablation of Table 2).
        rejected_anchor, corrupt_anchor: the extra anchors of Table 4, pushing the rejected /
            chosen_on_corrupt rewards *below* delta: -log sig(-(beta*lr(v) - delta)).
    """
    lr_c = _lr(policy, ref, "chosen")
    h_resp = lr_c - _lr(policy, ref, "rejected")  # (batch,)
    h_image = lr_c - _lr(policy, ref, "chosen_on_corrupt")  # (batch,)
    loss = torch.zeros_like(lr_c)
    if response:
        loss = loss - F.logsigmoid(beta * h_resp)
    if conditional:
        loss = loss - F.logsigmoid(beta * h_image)
    if anchor:
        loss = loss - F.logsigmoid(beta * lr_c - delta)
    if rejected_anchor:
        loss = loss - F.logsigmoid(-(beta * _lr(policy, ref, "rejected") - delta))
    if corrupt_anchor:
        loss = loss - F.logsigmoid(-(beta * _lr(policy, ref, "chosen_on_corrupt") - delta))
    metrics = _reward_metrics(policy, ref, beta, ("chosen", "rejected", "chosen_on_corrupt"))
    metrics["rewards/margins"] = (beta * h_resp).detach().mean()
    metrics["rewards/accuracies"] = (h_resp > 0).float().mean()
    metrics["rewards/image_margins"] = (beta * h_image).detach().mean()
    metrics["rewards/image_accuracies"] = (h_image > 0).float().mean()
    return loss, metrics


def mfpo(policy: Logps, ref: Logps, *, beta: float = 0.1, eta: float = 0.0,
         weights: tuple[float, float, float] = (1.0, 1.0, 1.0)):
    """MFPO (Jiang et al. 2024, https://arxiv.org/abs/2410.15334, eq. 5-7).

    Modality-fair: a text preference (eq. 5), an image preference against a *key-region
    noised* image m' (eq. 6), and a margin loss keeping the chosen reward above eta (eq. 7):

        L = w_text * L_text + w_image * L_image + w_margin * L_margin

    The loss has mDPO's shape; what makes MFPO is how m' is built (mmpo.perturb.diffusion_noise
    on keyword regions) and the easy-to-hard curriculum (mmpo.curriculum).

    Args:
        policy, ref: views ``chosen``, ``rejected``, ``chosen_on_corrupt``, each ``(batch,)``.
        beta: inverse temperature. eta: the margin of eq. 7 (best 0, Table 6).
        weights: (w_text, w_image, w_margin), best 1:1:1 (Table 5).
    """
    w_text, w_image, w_margin = weights
    lr_c = _lr(policy, ref, "chosen")
    h_resp = lr_c - _lr(policy, ref, "rejected")  # (batch,)
    h_image = lr_c - _lr(policy, ref, "chosen_on_corrupt")  # (batch,)
    l_text = -F.logsigmoid(beta * h_resp)
    l_image = -F.logsigmoid(beta * h_image)
    l_margin = -F.logsigmoid(beta * lr_c - eta)
    loss = w_text * l_text + w_image * l_image + w_margin * l_margin
    metrics = _reward_metrics(policy, ref, beta, ("chosen", "rejected", "chosen_on_corrupt"))
    metrics["rewards/margins"] = (beta * h_resp).detach().mean()
    metrics["rewards/accuracies"] = (h_resp > 0).float().mean()
    metrics["rewards/image_margins"] = (beta * h_image).detach().mean()
    metrics["rewards/image_accuracies"] = (h_image > 0).float().mean()
    metrics["mfpo/loss_text"] = l_text.detach().mean()
    metrics["mfpo/loss_image"] = l_image.detach().mean()
    metrics["mfpo/loss_margin"] = l_margin.detach().mean()
    return loss, metrics


def napo_loss(x: torch.Tensor, q) -> torch.Tensor:
    """Negative Box-Cox blend of BCE and MAE: (1 - sig(x)^q) / q, elementwise.

    q -> 0 is -log sig(x) (DPO's BCE); q = 1 is 1 - sig(x) (MAE, robust to flipped labels).
    Its gradient is sig(x)^q times DPO's, so confidently-wrong (noisy) pairs weigh less.
    Written as -expm1(q * log sig(x)) / q, which is exact for tiny q and never overflows.
    """
    q = torch.as_tensor(q, dtype=x.dtype, device=x.device)
    ls = F.logsigmoid(x)
    box_cox = -torch.expm1(q * ls) / q.clamp_min(1e-4)
    return torch.where(q < 1e-4, -ls, box_cox)


def dynamic_q(margin: torch.Tensor, *, alpha: float, beta: float = 0.1, form: str = "code"):
    """NaPO's noise-robustness q from the batch-mean margin (detached, mean over ranks).

    A large mean margin means the pairs look clean, so q falls towards BCE; a small or
    negative one means noise, so q rises towards MAE.
      paper (eq. 12): q = clip(1 - sig(alpha * mean(beta * margin)), 0.01, 1)
      code (default): q = clip(2 * (1 - sig(alpha * mean(margin))), 0.001, 1)
    """
    with torch.no_grad():
        m = _global_mean(margin)
        if form == "paper":
            return (1 - torch.sigmoid(alpha * beta * m)).clamp(0.01, 1.0)
        if form == "code":
            return (2 * (1 - torch.sigmoid(alpha * m))).clamp(0.001, 1.0)
        raise ValueError(f"unknown NaPO q_form {form!r}: expected 'code' or 'paper'")


def napo(policy: Logps, ref: Logps, lengths: Logps, *, beta: float = 0.1,
         weights=(0.04, 0.48, 0.48), q=None, q_form: str = "code",
         alpha: tuple[float, float] = (0.5, 0.01)):
    """NaPO (Zhang et al., CVPR 2025, https://arxiv.org/abs/2503.17928, eq. 12-14).

    Negatives built automatically by the model itself (answers without the image, or without
    the question) are noisy labels. NaPO scores them with the Box-Cox loss ``napo_loss`` whose
    robustness q adapts to how noisy the batch looks, next to plain DPO on the human pair:

        L = g_l * L_DPO(chosen, rejected) + g_lb * L_q(chosen, lang_biased)
            + g_vb * L_q(chosen, vision_biased)

    Args:
        policy, ref: views ``chosen``, ``rejected``, ``lang_biased``, ``vision_biased`` ``(batch,)``.
        lengths: response token counts by view ``(batch,)``; the language-biased q uses the
            length-averaged margin (released code).
        beta: inverse temperature.
        weights: (g_l, g_lb, g_vb) fixed (released code), or "dynamic" for eq. 13:
            g_i = mean(beta*h_i) / sum_j mean(beta*h_j), detached, clipped to [0.01, 1].
        q: a float fixes q for both negative types; None makes it dynamic (``dynamic_q``).
        q_form: "code" (default) or "paper" form of the dynamic q.
        alpha: (alpha_lang, alpha_vision) of the dynamic q.
    """
    lr_c = _lr(policy, ref, "chosen")
    h = lr_c - _lr(policy, ref, "rejected")  # (batch,)
    h_lb = lr_c - _lr(policy, ref, "lang_biased")  # (batch,)
    h_vb = lr_c - _lr(policy, ref, "vision_biased")  # (batch,)
    if q is None:
        def avg(v):
            return _lr(policy, ref, v) / lengths[v].clamp_min(1)
        q_lb = dynamic_q(avg("chosen") - avg("lang_biased"), alpha=alpha[0], beta=beta, form=q_form)
        q_vb = dynamic_q(h_vb, alpha=alpha[1], beta=beta, form=q_form)
    else:
        q_lb = q_vb = torch.tensor(float(q), device=h.device)
    if isinstance(weights, str):
        if weights != "dynamic":
            raise ValueError(f"unknown NaPO weights {weights!r}: expected 3 floats or 'dynamic'")
        with torch.no_grad():
            means = torch.stack([_global_mean(beta * x) for x in (h, h_lb, h_vb)])  # (3,)
            g = torch.nan_to_num(means / means.sum(), nan=1.0 / 3).clamp(0.01, 1.0)
        g_l, g_lb, g_vb = g.unbind()
    else:
        g_l, g_lb, g_vb = weights
    l_dpo = -F.logsigmoid(beta * h)
    l_lb = napo_loss(beta * h_lb, q_lb)
    l_vb = napo_loss(beta * h_vb, q_vb)
    loss = g_l * l_dpo + g_lb * l_lb + g_vb * l_vb
    views = ("chosen", "rejected", "lang_biased", "vision_biased")
    metrics = _reward_metrics(policy, ref, beta, views)
    metrics["rewards/margins"] = (beta * h).detach().mean()
    metrics["rewards/accuracies"] = (h > 0).float().mean()
    metrics["rewards/lang_accuracies"] = (h_lb > 0).float().mean()
    metrics["rewards/vision_accuracies"] = (h_vb > 0).float().mean()
    metrics["napo/q_lang"] = torch.as_tensor(q_lb).detach().float()
    metrics["napo/q_vision"] = torch.as_tensor(q_vb).detach().float()
    for name, g in (("g_dpo", g_l), ("g_lang", g_lb), ("g_vision", g_vb)):
        metrics[f"napo/{name}"] = torch.as_tensor(g).detach().float()
    return loss, metrics


def symmpo(policy: Logps, ref: Logps, *, beta: float = 0.1, lam: float = 0.5,
           gamma: float = 1e-4, eta: float = 1.0, delta: float = 0.0, margin_form: str = "code"):
    """SymMPO (Liu et al., NeurIPS 2025, https://arxiv.org/abs/2506.11712).

    Symmetric pairs: with a similar real image m' and its answer y_w', y_w must beat y_w' on m
    and y_w' must beat y_w on m'. Both comparisons keep the image fixed, so (unlike mDPO's
    image pair) the partition function cancels as in DPO. A margin-consistency term keeps the
    two preference gaps equal, and anchors keep both preferred rewards above delta:

        L = L_DPO + lam * L_pair + gamma * (h1 - h2)^2 + eta * L_anchor
        h1 = lr(chosen) - lr(contrast_on_image),  h2 = lr(contrast_on_corrupt) - lr(chosen_on_corrupt)

    Args:
        policy, ref: views ``chosen``, ``rejected``, ``contrast_on_image``, ``chosen_on_corrupt``,
            ``contrast_on_corrupt``, each ``(batch,)``.
        lam, gamma, eta: weights of the pair, margin and anchor terms. delta: the anchor value.
        margin_form: "code" (released: un-scaled margins) or "paper" (beta-scaled margins,
            i.e. the code form times beta^2).
    """
    lr_c = _lr(policy, ref, "chosen")
    lr_cc = _lr(policy, ref, "contrast_on_corrupt")
    h = lr_c - _lr(policy, ref, "rejected")  # (batch,)
    h1 = lr_c - _lr(policy, ref, "contrast_on_image")  # (batch,)
    h2 = lr_cc - _lr(policy, ref, "chosen_on_corrupt")  # (batch,)
    if margin_form not in ("code", "paper"):
        raise ValueError(f"unknown SymMPO margin_form {margin_form!r}: expected 'code' or 'paper'")
    scale = 1.0 if margin_form == "code" else beta
    l_dpo = -F.logsigmoid(beta * h)
    l_pair = -F.logsigmoid(beta * h1) - F.logsigmoid(beta * h2)
    l_margin = (scale * h1 - scale * h2) ** 2
    l_anchor = -F.logsigmoid(beta * lr_c - delta) - F.logsigmoid(beta * lr_cc - delta)
    loss = l_dpo + lam * l_pair + gamma * l_margin + eta * l_anchor
    views = ("chosen", "rejected", "contrast_on_image", "chosen_on_corrupt", "contrast_on_corrupt")
    metrics = _reward_metrics(policy, ref, beta, views)
    metrics["rewards/margins"] = (beta * h).detach().mean()
    metrics["rewards/accuracies"] = (h > 0).float().mean()
    metrics["rewards/image_accuracies"] = (h1 > 0).float().mean()
    metrics["rewards/corrupt_accuracies"] = (h2 > 0).float().mean()
    metrics["symmpo/margin_gap"] = (h1 - h2).detach().abs().mean()
    metrics["symmpo/loss_pair"] = l_pair.detach().mean()
    metrics["symmpo/loss_margin"] = l_margin.detach().mean()
    metrics["symmpo/loss_anchor"] = l_anchor.detach().mean()
    return loss, metrics


def sft(policy: Logps, ref: Logps, lengths: Logps):
    """Supervised fine-tuning: the next-token cross-entropy of the chosen answer given the image
    and the prompt, averaged over every answer token of the batch (as a causal LM's loss is).

    Not a preference objective: it trains a base model to read the image (``python -m mmpo.toy``
    starts from one). ``ref`` is not used: SFT has no reference model.

    Args:
        policy: summed log-probs of view ``chosen``, ``(batch,)``; lengths: its token counts.
    Returns:
        loss ``(batch,)`` whose mean is the per-token loss of the batch, and metrics
        (``logps/chosen``, the mean summed log-prob of an answer).
    """
    n = lengths["chosen"]
    loss = -policy["chosen"] * (n.numel() / n.sum())
    return loss, {"logps/chosen": policy["chosen"].detach().mean()}


class Objective(NamedTuple):
    fn: Callable
    views: tuple[str, ...]
    needs_lengths: bool = False
    reference: bool = True  # False: no reference model is built or scored (SFT)


OBJECTIVES: dict[str, Objective] = {
    "dpo": Objective(dpo, ("chosen", "rejected")),
    "mdpo": Objective(mdpo, ("chosen", "rejected", "chosen_on_corrupt")),
    "mfpo": Objective(mfpo, ("chosen", "rejected", "chosen_on_corrupt")),
    "napo": Objective(napo, ("chosen", "rejected", "lang_biased", "vision_biased"), True),
    "symmpo": Objective(symmpo, ("chosen", "rejected", "contrast_on_image", "chosen_on_corrupt",
                                 "contrast_on_corrupt")),
    "sft": Objective(sft, ("chosen",), needs_lengths=True, reference=False),
}


def compute(name: str, policy: Logps, ref: Logps, lengths: Logps, **hparams):
    """Run objective ``name``; the one place the training loop and eval call objectives from."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    obj = OBJECTIVES[name]
    if obj.needs_lengths:
        return obj.fn(policy, ref, lengths, **hparams)
    return obj.fn(policy, ref, **hparams)
