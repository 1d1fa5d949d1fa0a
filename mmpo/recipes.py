"""The table of objectives: for each, its loss function, the views it scores, the options it takes
from the run's settings, its defaults, and the configuration its authors released.

``Objective.loss`` is the one place a loss function is called (training and held-out figures). A
new objective is one function (``mmpo/objectives.py`` or your own file) and one entry in
``OBJECTIVES``. ``options`` reads the run's settings by name (``cfg.beta``: any object with them).
"""
import inspect
from typing import Callable, NamedTuple

from mmpo import objectives as O
from mmpo.cli import UserError
from mmpo.distributed import Dist, global_mean


class Objective(NamedTuple):
    fn: Callable  # (policy, ref[, lengths], **options) -> (loss (batch,), its own metrics)
    views: tuple[str, ...]  # what the model scores for each example (``mmpo/constants.py``'s VIEWS)
    options: Callable[[object, Dist], dict]  # the loss's keyword arguments, from the run's settings
    lr: float  # the paper's learning rate (its model: a 7B one); tiny-* models take 1e-3
    weight_decay: float = 0.0
    m_prime: str = "crop"  # the second image m' when the data has none (--m-prime)
    reference: bool = True  # False: no reference model is built or scored (SFT)
    needs_lengths: bool = False  # the loss takes the response token counts too
    recipe: tuple[str, dict] | None = None  # --recipe paper: (its source, {setting: value})

    def loss(self, policy: dict, ref: dict, lengths: dict, options: dict):
        """The loss ``(batch,)`` and every metric: what all objectives log alike
        (``objectives.shared_metrics``, the rewards at the loss's own beta: the option, else the
        function's default), then the loss's own. ``policy``, ``ref``, ``lengths``: {view: (batch,)}."""
        args = (policy, ref, lengths) if self.needs_lengths else (policy, ref)
        out, own = self.fn(*args, **options)
        beta = None
        if self.reference:
            default = inspect.signature(self.fn).parameters.get("beta")
            beta = options.get("beta", None if default is None else default.default)
        return out, {**O.shared_metrics(policy, ref, self.views, beta), **own}


def numbers(text: str, n: int, flag: str) -> tuple[float, ...]:
    """An option of ``n`` comma-separated numbers ("1,1,1"), as floats."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise UserError(f"{flag}: expected {n} comma-separated numbers, got {text!r}")
    return values


def _mdpo_options(cfg, d: Dist) -> dict:
    return {"beta": cfg.beta, "delta": cfg.mdpo_delta, "response": cfg.mdpo_response,
            "conditional": cfg.mdpo_conditional, "anchor": cfg.mdpo_anchor,
            "rejected_anchor": cfg.mdpo_rejected_anchor, "corrupt_anchor": cfg.mdpo_corrupt_anchor}


def _mfpo_options(cfg, d: Dist) -> dict:
    return {"beta": cfg.beta, "eta": cfg.mfpo_eta, "weights": numbers(cfg.mfpo_weights, 3, "--mfpo-weights")}


def _napo_options(cfg, d: Dist) -> dict:
    weights = "dynamic" if cfg.napo_weights == "dynamic" else numbers(cfg.napo_weights, 3, "--napo-weights")
    # q and the dynamic weights come from the mean over the global batch: every rank the same
    return {"beta": cfg.beta, "weights": weights, "q": cfg.napo_q, "q_form": cfg.napo_q_form,
            "alpha": numbers(cfg.napo_alpha, 2, "--napo-alpha"), "batch_mean": global_mean(d)}


def _symmpo_options(cfg, d: Dist) -> dict:
    return {"beta": cfg.beta, "lam": cfg.symmpo_lam, "gamma": cfg.symmpo_gamma, "eta": cfg.symmpo_eta,
            "delta": cfg.symmpo_delta, "margin_form": cfg.symmpo_margin_form}


# The released configurations (--recipe paper): every hyperparameter the authors' training script
# sets, with the file it comes from. Batch sizes are per process, as released: mDPO ran on one
# process, SymMPO on 4 GPUs (global batch 128), NaPO's GPU count is not in its script.
_MDPO_RECIPE = dict(lr=1e-5, epochs=3, warmup=0.1, weight_decay=0.05, adam_beta2=0.98, beta=0.1, batch_size=4,
                    grad_accum=8, lora_rank=64, lora_alpha=128.0, lora_dropout=0.05, dtype="bf16", max_length=2048)

OBJECTIVES: dict[str, Objective] = {
    "dpo": Objective(O.dpo, ("chosen", "rejected"), lambda cfg, d: {"beta": cfg.beta}, lr=1e-5,
                     recipe=("mDPO's DPO baseline: luka-group/mDPO bunny/config.yaml", _MDPO_RECIPE)),
    "mdpo": Objective(O.mdpo, ("chosen", "rejected", "chosen_on_corrupt"), _mdpo_options, lr=1e-5,
                      recipe=("luka-group/mDPO bunny/config.yaml", {**_MDPO_RECIPE, "mdpo_delta": 0.0, "m_prime": "crop"})),
    # MFPO releases no code and its supplementary configuration is not public: mDPO's, with its noise
    "mfpo": Objective(O.mfpo, ("chosen", "rejected", "chosen_on_corrupt"), _mfpo_options, lr=1e-5, m_prime="noise",
                      recipe=("unpublished; mDPO's bunny/config.yaml", {**_MDPO_RECIPE, "m_prime": "noise"})),
    "napo": Objective(O.napo, ("chosen", "rejected", "lang_biased", "vision_biased"), _napo_options, lr=5e-7,
                      weight_decay=0.01, needs_lengths=True,
                      # pipeline.sh's 4-epoch NaPO block with loss_weight 0.02-0.49-0.49 (its 0.04-0.48-0.48
                      # blocks run 10 epochs); the hyperparameters it passes to llava15_train_bias.sh
                      recipe=("zhangzef/NaPO script/pipeline/pipeline.sh (4 epochs, loss_weight 0.02-0.49-0.49) "
                              "+ llava15_train_bias.sh",
                              dict(lr=5e-7, epochs=4, warmup=0.1, weight_decay=0.01, adam_beta2=0.999, beta=0.1,
                                   batch_size=1, grad_accum=4, lora_rank=0, dtype="bf16", max_length=2048,
                                   napo_weights="0.02,0.49,0.49", napo_q=None, napo_q_form="code",
                                   napo_alpha="0.5,0.01"))),
    "symmpo": Objective(O.symmpo, ("chosen", "rejected", "contrast_on_image", "chosen_on_corrupt", "contrast_on_corrupt"),
                        _symmpo_options, lr=5e-6, weight_decay=0.01, m_prime="contrast",
                        recipe=("iLearn-Lab/NeurIPS25-SymMPO script/train/llava15_train_main.sh + run.sh",
                                dict(lr=5e-6, epochs=10, max_steps=670, warmup=0.05, weight_decay=0.01,
                                     adam_beta2=0.999, beta=0.1, batch_size=4, grad_accum=8, lora_rank=0, dtype="bf16",
                                     max_length=2048, symmpo_lam=0.5, symmpo_eta=1.0, symmpo_delta=0.0,
                                     # gamma left at None: the released 1e-4 * (h1 - h2)^2 in either margin form
                                     symmpo_margin_form="code", m_prime="contrast"))),
    # LLaVA-1.5's visual instruction tuning (stage 2), 8 GPUs: global batch 128
    "sft": Objective(O.sft, ("chosen",), lambda cfg, d: {}, lr=2e-5, reference=False, needs_lengths=True,
                     recipe=("haotian-liu/LLaVA scripts/v1_5/finetune.sh",
                             dict(lr=2e-5, epochs=1, warmup=0.03, weight_decay=0.0, adam_beta2=0.999, batch_size=16,
                                  grad_accum=1, lora_rank=0, dtype="bf16", max_length=2048))),
}
