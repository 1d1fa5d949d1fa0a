"""The five preference objectives and plain SFT, each a function of per-view log-probabilities.

Every loss takes ``policy`` and ``ref``: dicts mapping a view name (``mmpo/constants.py``'s VIEWS) to the *summed*
response log-probability of each example, shape ``(batch,)``, and its hyperparameters as keyword
arguments. It returns ``(loss, metrics)``: the unreduced per-example loss ``(batch,)`` and a dict
of the detached scalars that are its own.

    logratio(v) = policy[v] - ref[v]      the implicit reward is beta * logratio(v)

This file imports torch and nothing else: copy any one function into your own project; its
docstring's "Lifting it" names everything the copy needs (tests/test_objectives.py lifts each
with exactly those names). Which views and options each objective takes in a run, its defaults
and its released configuration are in ``mmpo/recipes.py``; ``shared_metrics`` (below) is what every
objective logs alike.
"""
import torch
import torch.nn.functional as F


def dpo(policy: dict, ref: dict, *, beta: float = 0.1):
    """DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290, eq. 7).

    Prefer y_w over y_l under the same image: L = -log sig(beta * h_resp), with the response
    margin h_resp = logratio(chosen) - logratio(rejected). This is the baseline that, on
    image+text data, can learn the preference from text alone.

    Args:
        policy, ref: summed log-probs of views ``chosen`` and ``rejected``, each ``(batch,)``.
        beta: inverse temperature of the implicit reward.
    Returns:
        loss ``(batch,)``, and no metrics of its own (``shared_metrics`` has rewards/* and logps/*).

    Lifting it: ``F`` (torch.nn.functional) is all it needs.
    """
    # the reference is a constant of the objective: no gradient may flow into it
    logratio = {v: policy[v] - ref[v].detach() for v in ("chosen", "rejected")}  # each (batch,)
    h_resp = logratio["chosen"] - logratio["rejected"]  # (batch,)
    return -F.logsigmoid(beta * h_resp), {}


def mdpo(policy: dict, ref: dict, *, beta: float = 0.1, delta: float = 0.0,
         response: bool = True, conditional: bool = True, anchor: bool = True,
         rejected_anchor: bool = False, corrupt_anchor: bool = False):
    """mDPO (Wang et al. 2024, https://arxiv.org/abs/2406.11839, sec. 3, L_MDPO).

    DPO can ignore the image. mDPO adds a *conditional* pair where only the image changes
    (same answer y_w on the real image m beats it on a corrupted image m'), and a reward
    *anchor* that keeps the chosen reward above delta so its likelihood does not fall:

        L = -log sig(beta*h_resp) - log sig(beta*h_image) - log sig(beta*logratio(chosen) - delta)
        h_resp = logratio(chosen) - logratio(rejected)
        h_image = logratio(chosen) - logratio(chosen_on_corrupt)

    Args:
        policy, ref: views ``chosen``, ``rejected``, ``chosen_on_corrupt``, each ``(batch,)``.
        beta: inverse temperature. delta: the anchor value.
        response, conditional, anchor: switch each term (the ablation of Table 2).
        rejected_anchor, corrupt_anchor: the extra anchors of Table 4, pushing the rejected /
            chosen_on_corrupt rewards *below* delta: -log sig(-(beta*logratio(v) - delta)).
    Returns:
        loss ``(batch,)`` and the conditional pair's ``rewards/image_margins``,
        ``rewards/image_accuracies``.

    Lifting it: ``torch`` and ``F`` (torch.nn.functional) are all it needs.
    """
    # the reference is a constant of the objective: no gradient may flow into it
    logratio = {v: policy[v] - ref[v].detach() for v in ("chosen", "rejected", "chosen_on_corrupt")}
    h_resp = logratio["chosen"] - logratio["rejected"]  # (batch,)
    h_image = logratio["chosen"] - logratio["chosen_on_corrupt"]  # (batch,)
    loss = torch.zeros_like(h_resp)
    if response:
        loss = loss - F.logsigmoid(beta * h_resp)
    if conditional:
        loss = loss - F.logsigmoid(beta * h_image)
    if anchor:
        loss = loss - F.logsigmoid(beta * logratio["chosen"] - delta)
    if rejected_anchor:
        loss = loss - F.logsigmoid(-(beta * logratio["rejected"] - delta))
    if corrupt_anchor:
        loss = loss - F.logsigmoid(-(beta * logratio["chosen_on_corrupt"] - delta))
    return loss, {"rewards/image_margins": (beta * h_image).detach().mean(),
                  "rewards/image_accuracies": (h_image > 0).float().mean()}


def mfpo(policy: dict, ref: dict, *, beta: float = 0.1, eta: float = 0.0,
         weights: tuple[float, float, float] = (1.0, 1.0, 1.0)):
    """MFPO (Jiang et al. 2024, https://arxiv.org/abs/2410.15334, eq. 5-7).

    Modality-fair: a text preference (eq. 5), an image preference against a *key-region
    noised* image m' (eq. 6), and a margin loss keeping the chosen reward above eta (eq. 7):

        L = w_text * L_text + w_image * L_image + w_margin * L_margin
        L_text = -log sig(beta*h_resp),  L_image = -log sig(beta*h_image),
        L_margin = -log sig(beta*logratio(chosen) - eta)      (h_resp, h_image as in mDPO)

    The loss has mDPO's shape; what makes MFPO is how m' is built (mmpo.perturb.diffusion_noise
    on keyword regions) and the easy-to-hard curriculum (mmpo/training/curriculum.py).

    Args:
        policy, ref: views ``chosen``, ``rejected``, ``chosen_on_corrupt``, each ``(batch,)``.
        beta: inverse temperature. eta: the margin of eq. 7 (best 0, Table 5).
        weights: (w_text, w_image, w_margin), best 1:1:1 (Table 6).
    Returns:
        loss ``(batch,)``, the conditional pair's ``rewards/image_margins`` and
        ``rewards/image_accuracies``, and each term's mean ``mfpo/loss_{text,image,margin}``.

    Lifting it: ``F`` (torch.nn.functional) is all it needs.
    """
    w_text, w_image, w_margin = weights
    # the reference is a constant of the objective: no gradient may flow into it
    logratio = {v: policy[v] - ref[v].detach() for v in ("chosen", "rejected", "chosen_on_corrupt")}
    h_resp = logratio["chosen"] - logratio["rejected"]  # (batch,)
    h_image = logratio["chosen"] - logratio["chosen_on_corrupt"]  # (batch,)
    l_text = -F.logsigmoid(beta * h_resp)
    l_image = -F.logsigmoid(beta * h_image)
    l_margin = -F.logsigmoid(beta * logratio["chosen"] - eta)
    loss = w_text * l_text + w_image * l_image + w_margin * l_margin
    return loss, {"rewards/image_margins": (beta * h_image).detach().mean(),
                  "rewards/image_accuracies": (h_image > 0).float().mean(),
                  "mfpo/loss_text": l_text.detach().mean(),
                  "mfpo/loss_image": l_image.detach().mean(),
                  "mfpo/loss_margin": l_margin.detach().mean()}


# ---- NaPO: its loss and the three helpers that are NaPO's own -------------------------------

def box_cox_loss(x: torch.Tensor, q) -> torch.Tensor:
    """NaPO's noise-robust term: the negative Box-Cox blend of BCE and MAE, (1 - sig(x)^q) / q,
    elementwise.

    q -> 0 is -log sig(x) (DPO's BCE); q = 1 is 1 - sig(x) (MAE, robust to flipped labels).
    Its gradient is sig(x)^q times DPO's, so confidently-wrong (noisy) pairs weigh less.
    Written as -expm1(q * log sig(x)) / q, which is exact for tiny q and never overflows;
    below q = 1e-4 it is the q -> 0 limit itself.
    """
    q = torch.as_tensor(q, dtype=x.dtype, device=x.device)
    ls = F.logsigmoid(x)
    box_cox = -torch.expm1(q * ls) / q.clamp_min(1e-4)
    return torch.where(q < 1e-4, -ls, box_cox)


def dynamic_q(margin: torch.Tensor, *, alpha: float, beta: float = 0.1, form: str = "code", batch_mean=torch.mean):
    """NaPO's noise-robustness q from the batch-mean margin, detached. ``batch_mean``: the mean
    of a tensor over the whole global batch (the caller's: over every rank in distributed runs).

    A large mean margin means the pairs look clean, so q falls towards BCE; a small or
    negative one means noise, so q rises towards MAE.
      paper (eq. 12): q = clip(1 - sig(alpha * mean(beta * margin)), 0.01, 1)
      code (default): q = clip(2 * (1 - sig(alpha * mean(margin))), 0.001, 1)
    """
    with torch.no_grad():
        m = batch_mean(margin.detach().float())
        if form == "paper":
            return (1 - torch.sigmoid(alpha * beta * m)).clamp(0.01, 1.0)
        if form == "code":
            return (2 * (1 - torch.sigmoid(alpha * m))).clamp(0.001, 1.0)
        raise ValueError(f"unknown NaPO q_form {form!r}: expected 'code' or 'paper'")


def napo(policy: dict, ref: dict, lengths: dict, *, beta: float = 0.1,
         weights=(0.04, 0.48, 0.48), q=None, q_form: str = "code",
         alpha: tuple[float, float] = (0.5, 0.01), batch_mean=torch.mean):
    """NaPO (Zhang et al., CVPR 2025, https://arxiv.org/abs/2503.17928, eq. 12-14).

    Negatives built automatically by the model itself (answers without the image, or without
    the question) are noisy labels. NaPO scores them with ``box_cox_loss``, whose robustness q
    adapts to how noisy the batch looks, next to plain DPO on the human pair:

        L = g_l * L_DPO(chosen, rejected) + g_lb * L_q(chosen, lang_biased)
            + g_vb * L_q(chosen, vision_biased)

    Lifting it: copy ``box_cox_loss`` and ``dynamic_q`` (above) with it; it needs ``torch`` and ``F``
    (torch.nn.functional).

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
        batch_mean: the mean over the global batch that q and the dynamic weights are taken
            from; in a distributed run the caller passes one that averages over every rank
            (``mmpo.distributed.global_mean``), so that every rank uses the same q.
    Returns:
        loss ``(batch,)``; ``rewards/lang_accuracies`` and ``rewards/vision_accuracies`` (the share
        of pairs against each negative ranked right), ``napo/q_{lang,vision}`` and
        ``napo/g_{dpo,lang,vision}``.
    """
    views = ("chosen", "rejected", "lang_biased", "vision_biased")
    # the reference is a constant of the objective: no gradient may flow into it
    logratio = {v: policy[v] - ref[v].detach() for v in views}  # each (batch,)
    h_resp = logratio["chosen"] - logratio["rejected"]  # (batch,)
    h_lb = logratio["chosen"] - logratio["lang_biased"]  # (batch,)
    h_vb = logratio["chosen"] - logratio["vision_biased"]  # (batch,)
    if q is None:
        per_token = {v: logratio[v] / lengths[v].clamp_min(1) for v in ("chosen", "lang_biased")}
        q_lb = dynamic_q(per_token["chosen"] - per_token["lang_biased"], alpha=alpha[0], beta=beta, form=q_form,
                         batch_mean=batch_mean)
        q_vb = dynamic_q(h_vb, alpha=alpha[1], beta=beta, form=q_form, batch_mean=batch_mean)
    else:
        q_lb = q_vb = torch.tensor(float(q), device=h_resp.device)
    if isinstance(weights, str):
        if weights != "dynamic":
            raise ValueError(f"unknown NaPO weights {weights!r}: expected 3 floats or 'dynamic'")
        with torch.no_grad():
            means = torch.stack([batch_mean((beta * h).detach().float()) for h in (h_resp, h_lb, h_vb)])  # (3,)
            g = torch.nan_to_num(means / means.sum(), nan=1.0 / 3).clamp(0.01, 1.0)
        g_l, g_lb, g_vb = g.unbind()
    else:
        g_l, g_lb, g_vb = weights
    l_dpo = -F.logsigmoid(beta * h_resp)
    l_lb = box_cox_loss(beta * h_lb, q_lb)
    l_vb = box_cox_loss(beta * h_vb, q_vb)
    loss = g_l * l_dpo + g_lb * l_lb + g_vb * l_vb
    metrics = {"rewards/lang_accuracies": (h_lb > 0).float().mean(),
               "rewards/vision_accuracies": (h_vb > 0).float().mean(),
               "napo/q_lang": torch.as_tensor(q_lb).detach().float(),
               "napo/q_vision": torch.as_tensor(q_vb).detach().float()}
    for name, g in (("g_dpo", g_l), ("g_lang", g_lb), ("g_vision", g_vb)):
        metrics[f"napo/{name}"] = torch.as_tensor(g).detach().float()
    return loss, metrics


def symmpo(policy: dict, ref: dict, *, beta: float = 0.1, lam: float = 0.5,
           gamma: float | None = None, eta: float = 1.0, delta: float = 0.0, margin_form: str = "code"):
    """SymMPO (Liu et al., NeurIPS 2025, https://arxiv.org/abs/2506.11712).

    Symmetric pairs: with a similar real image m' and its answer y_w', y_w must beat y_w' on m
    and y_w' must beat y_w on m'. Both comparisons keep the image fixed, so (unlike mDPO's
    image pair) the partition function cancels as in DPO. A margin-consistency term keeps the
    two preference gaps equal, and anchors keep both preferred rewards above delta:

        L = L_DPO(h_resp) + lam * L_pair + gamma * (h1 - h2)^2 + eta * L_anchor
        h1 = logratio(chosen) - logratio(contrast_on_image)
        h2 = logratio(contrast_on_corrupt) - logratio(chosen_on_corrupt)

    Args:
        policy, ref: views ``chosen``, ``rejected``, ``contrast_on_image``, ``chosen_on_corrupt``,
            ``contrast_on_corrupt``, each ``(batch,)``.
        lam, eta: weights of the pair and anchor terms (0.5, 1). delta: the anchor value.
        margin_form: "code" (released: un-scaled margins h1, h2) or "paper" (beta-scaled margins
            beta*h1, beta*h2, so the term is beta^2 (h1 - h2)^2).
        gamma: weight of the margin term. None: the released term, 1e-4 * (h1 - h2)^2, in either
            form: 1e-4 in the code form, 1e-4 / beta^2 in the paper form, since
            (1e-4 / beta^2) * (beta*h1 - beta*h2)^2 = 1e-4 * (h1 - h2)^2 (at beta 0.1: 1e-2).
            A number is used as given (gamma=1e-4 with the paper form is 100x weaker at beta 0.1).
    Returns:
        loss ``(batch,)``; ``rewards/image_accuracies`` (h1 > 0: on m, y_w beats y_w'),
        ``rewards/corrupt_accuracies`` (h2 > 0), ``symmpo/margin_gap`` (mean |h1 - h2|) and each
        term's mean ``symmpo/loss_{pair,margin,anchor}``.

    Lifting it: ``F`` (torch.nn.functional) is all it needs.
    """
    if margin_form not in ("code", "paper"):
        raise ValueError(f"unknown SymMPO margin_form {margin_form!r}: expected 'code' or 'paper'")
    views = ("chosen", "rejected", "contrast_on_image", "chosen_on_corrupt", "contrast_on_corrupt")
    # the reference is a constant of the objective: no gradient may flow into it
    logratio = {v: policy[v] - ref[v].detach() for v in views}  # each (batch,)
    h_resp = logratio["chosen"] - logratio["rejected"]  # (batch,)
    h1 = logratio["chosen"] - logratio["contrast_on_image"]  # (batch,)
    h2 = logratio["contrast_on_corrupt"] - logratio["chosen_on_corrupt"]  # (batch,)
    scale = 1.0 if margin_form == "code" else beta
    gamma = 1e-4 / scale ** 2 if gamma is None else gamma  # None: the released term in either form
    l_dpo = -F.logsigmoid(beta * h_resp)
    l_pair = -F.logsigmoid(beta * h1) - F.logsigmoid(beta * h2)
    l_margin = (scale * h1 - scale * h2) ** 2
    l_anchor = (-F.logsigmoid(beta * logratio["chosen"] - delta)
                - F.logsigmoid(beta * logratio["contrast_on_corrupt"] - delta))
    loss = l_dpo + lam * l_pair + gamma * l_margin + eta * l_anchor
    return loss, {"rewards/image_accuracies": (h1 > 0).float().mean(),
                  "rewards/corrupt_accuracies": (h2 > 0).float().mean(),
                  "symmpo/margin_gap": (h1 - h2).detach().abs().mean(),
                  "symmpo/loss_pair": l_pair.detach().mean(),
                  "symmpo/loss_margin": l_margin.detach().mean(),
                  "symmpo/loss_anchor": l_anchor.detach().mean()}


def sft(policy: dict, ref: dict, lengths: dict):
    """Supervised fine-tuning: the next-token cross-entropy of the chosen answer given the image
    and the prompt, averaged over every answer token of the batch (as a causal LM's loss is).

    Not a preference objective: it trains a base model to read the image (``python -m mmpo.toy``
    starts from one). ``ref`` is not used: SFT has no reference model.

    Args:
        policy: summed log-probs of view ``chosen``, ``(batch,)``; lengths: its token counts.
    Returns:
        loss ``(batch,)`` whose mean is the per-token loss of the batch, and no metrics of its
        own (``shared_metrics`` has ``logps/chosen``, the mean summed log-prob of an answer).

    Lifting it: it needs nothing but its arguments (tensors).
    """
    n = lengths["chosen"]
    return -policy["chosen"] * (n.numel() / n.sum()), {}


def shared_metrics(policy: dict, ref: dict, views: tuple[str, ...], beta: float | None) -> dict:
    """What every objective logs alike, under TRL's names: for each view the mean summed log-prob
    ``logps/<view>`` and, with a reference (``beta`` not None), the mean implicit reward
    ``rewards/<view>`` = beta * logratio; for the response pair (chosen, rejected) the reward
    margin ``rewards/margins`` and ``rewards/accuracies``, the share of pairs ranked right."""
    out = {}
    with torch.no_grad():
        for v in views:
            if beta is not None:
                out[f"rewards/{v}"] = (beta * (policy[v] - ref[v])).mean()
            out[f"logps/{v}"] = policy[v].mean()
        if beta is not None and "chosen" in views and "rejected" in views:
            h_resp = (policy["chosen"] - ref["chosen"]) - (policy["rejected"] - ref["rejected"])  # (batch,)
            out["rewards/margins"] = (beta * h_resp).mean()
            out["rewards/accuracies"] = (h_resp > 0).float().mean()
    return out
