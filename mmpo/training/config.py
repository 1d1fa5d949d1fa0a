"""train.py's settings: the one place where the command line becomes a checked Config.

``Config``: one dataclass, each field a flag (``batch_size`` -> ``--batch-size``); ``LIMITS``: the
ranges; ``RESUMABLE``: what a resumed run may change. ``parse_args`` and ``precheck`` are light (no
torch), so --help, option errors and every refusal that needs no model answer at once; ``resolve`` fills in --recipe paper and the objective's defaults
(``mmpo/recipes.py``), ``resume_config`` a resumed run's own; ``resolve`` refuses options that cannot
work together.
"""
import argparse
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

from mmpo.cli import Parser, UserError, check_limits
from mmpo.common.util import check_model_path
from mmpo.constants import LOGPS_CHUNK, M_PRIMES, NOISE_STEP, NOISE_STEPS, OBJECTIVE_NAMES, SHARE_PREFIX, TINY_MODELS


def opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    objective: str = opt("mdpo", "dpo | mdpo | mfpo | napo | symmpo | sft (supervised fine-tuning on the chosen "
                                 "answers, no reference); one of your own: an entry in mmpo/recipes.py's OBJECTIVES "
                                 "(and, for this command line, its name in mmpo/constants.py's OBJECTIVE_NAMES)")
    data: str = opt("", "preference JSONL; empty = the built-in synthetic dataset, written to OUT/synthetic")
    model: str = opt("tiny-llava", "hub id, local directory, or tiny-llava / tiny-qwen2vl / tiny-idefics3 (random, built from config)")
    out: str = opt("runs/default", "output directory: metrics.jsonl, config.json, checkpoints, final model")
    trust_remote_code: bool = opt(False, "let transformers run the model repository's own code")
    recipe: str = opt("practical", "practical: the defaults below | paper: the objective's released hyperparameters "
                                   "(mmpo/recipes.py); flags given explicitly still win", choices=("practical", "paper"))
    # schedule
    epochs: int = opt(3, "passes over the data (mDPO: 3, NaPO: 4); with a curriculum, over each stage")
    max_steps: int = opt(-1, "stop after this many optimizer steps (-1: run all epochs)")
    batch_size: int = opt(8, "examples per micro-batch (per rank)")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    lr: float = opt(None, "peak learning rate (default: the paper's; 1e-3 for tiny-* models)")
    warmup: float = opt(0.1, "warmup fraction of the steps, then cosine decay to 0")
    weight_decay: float = opt(None, "AdamW weight decay (default: the objective's; 0.01 for napo and symmpo, 0 for the others)")
    decay_all: bool = opt(False, "weight decay on biases and norm weights too (default: HF Trainer's convention, "
                                 "which exempts them)")
    adam_beta2: float = opt(0.999, "AdamW beta2 (mDPO's released configuration: 0.98)")
    max_grad_norm: float = opt(1.0, "gradient clipping (0: off)")
    max_length: int = opt(1024, "prompt + image + response tokens; responses are truncated, prompts never")
    # objective options (which objective reads which: mmpo/recipes.py)
    beta: float = opt(0.1, "inverse temperature of the implicit reward")
    mdpo_delta: float = opt(0.0, "mDPO anchor value delta")
    mdpo_response: bool = opt(True, "mDPO response (DPO) term (--no-mdpo-response to ablate)")
    mdpo_conditional: bool = opt(True, "mDPO conditional image term (--no-mdpo-conditional to ablate)")
    mdpo_anchor: bool = opt(True, "mDPO reward anchor (--no-mdpo-anchor to ablate)")
    mdpo_rejected_anchor: bool = opt(False, "mDPO Table 4 anchor on the rejected reward")
    mdpo_corrupt_anchor: bool = opt(False, "mDPO Table 4 anchor on the chosen_on_corrupt reward")
    mfpo_eta: float = opt(0.0, "MFPO margin eta (eq. 7)")
    mfpo_weights: str = opt("1,1,1", "MFPO weights of the text, image and margin terms")
    napo_q: float = opt(None, "NaPO fixed q (default: dynamic)")
    napo_q_form: str = opt("code", "NaPO dynamic q form: code | paper", choices=("code", "paper"))
    napo_weights: str = opt("0.04,0.48,0.48", "NaPO weights g_l,g_lb,g_vb, or 'dynamic' (eq. 13)")
    napo_alpha: str = opt("0.5,0.01", "NaPO alpha of the language- and vision-biased q")
    symmpo_lam: float = opt(0.5, "SymMPO weight of the symmetric pair term")
    symmpo_gamma: float = opt(None, "SymMPO weight of the margin-consistency term (default: the released term, 1e-4 "
                                    "on un-scaled margins; with --symmpo-margin-form paper that is 1e-4/beta^2, 1e-2 "
                                    "at beta 0.1, the same term)")
    symmpo_eta: float = opt(1.0, "SymMPO weight of the anchor term")
    symmpo_delta: float = opt(0.0, "SymMPO anchor value delta")
    symmpo_margin_form: str = opt("code", "SymMPO margin term: code (un-scaled margins, released) | paper (beta-scaled)",
                                  choices=("code", "paper"))
    # the second image m'
    m_prime: str = opt(None, "m' when the data has no corrupt_image: crop (mDPO default) | noise (MFPO default) | "
                             "blank, corruptions of m, or contrast: the row's contrast_image (SymMPO default)",
                       choices=M_PRIMES)
    noise_step: int = opt(None, "diffusion step t of the noise (of mmpo.perturb.NOISE_STEPS), added to the normalized "
                                f"pixels (default: the data's noise_step, else {NOISE_STEP})")
    redraw_m_prime: bool = opt(False, "a new random m' (crop, noise) every epoch, seeded by (seed, id, epoch), as released "
                                      "mDPO does; default: one m' per example per run (a --ref-cache needs it fixed)")
    # curriculum (MFPO sec. 3.3)
    curriculum: str = opt("none", "none | easy-to-hard: train on thirds of the data by the model's entropy on the chosen answer",
                          choices=("none", "easy-to-hard"))
    refresh_ref_per_stage: bool = opt(False, "make the current policy the reference at each curriculum stage")
    # model and memory
    lora_rank: int = opt(64, "LoRA rank r (0: full fine-tuning)")
    lora_alpha: float = opt(128.0, "LoRA alpha")
    lora_dropout: float = opt(0.05, "LoRA dropout")
    lora_targets: str = opt("", "comma-separated regexes of Linear names (default: every Linear of the language model)")
    dtype: str = opt("fp32", "fp32 | bf16 (bf16 autocast, fp32 master weights)", choices=("fp32", "bf16"))
    prefix_sharing: bool = opt(SHARE_PREFIX, "score each image + prompt prefix once for all the views on it, with a block attention "
                                     "mask (exact); --no-prefix-sharing: every view as a full sequence")
    logps_chunk: int = opt(LOGPS_CHUNK, "response positions whose full-vocabulary logits exist at once, recomputed in the backward "
                                "pass (exact); 0: every position at once")
    activation_checkpointing: bool = opt(False, "recompute each block's activations in the backward pass")
    ref_cache: str = opt("", "path of a reference log-prob cache: computed once, reused while it matches")
    # run
    seed: int = opt(0, "seed of the model init (tiny-*), data order, dropout and m'")
    resume: str = opt("", "continue the killed run in this output directory (only --max-steps, --epochs, --save-every, "
                          "--log-every, --eval-every, --num-workers, --report-to may change)")
    overwrite: bool = opt(False, "replace the run already in --out (its checkpoints, metrics and final model)")
    save_every: int = opt(50, "checkpoint every N steps (0: only at the end)")
    log_every: int = opt(1, "write metrics.jsonl every N steps")
    eval_data: str = opt("", "held-out preference JSONL: loss, reward accuracy/margins, conditional accuracy as eval/*")
    eval_every: int = opt(0, "evaluate on --eval-data every N steps (0: only at the end)")
    report_to: str = opt("none", "none | tensorboard (scalars under OUT/tensorboard; needs the tensorboard package)",
                         choices=("none", "tensorboard"))
    num_workers: int = opt(0, "DataLoader worker processes")
    merge: bool = opt(False, "also write OUT/merged: the adapters folded into a full model")
    max_nonfinite: int = opt(10, "stop after this many non-finite losses in a row")


# (check, what the value must be) for every option with a range, in Config's order; checked where it is parsed
AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
AT_LEAST_0 = (lambda v: v >= 0, "0 or more")
LIMITS = {
    "epochs": AT_LEAST_1, "max_steps": (lambda v: v == -1 or v >= 1, "-1 (all epochs) or at least 1"),
    "batch_size": AT_LEAST_1, "grad_accum": AT_LEAST_1, "lr": (lambda v: v is None or v > 0, "positive"),
    "warmup": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "weight_decay": (lambda v: v is None or v >= 0, "0 or more"),
    "adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"), "max_grad_norm": (lambda v: v >= 0, "0 (off) or more"),
    "max_length": (lambda v: v >= 2, "at least 2"),
    "beta": (lambda v: v > 0, "positive"), "napo_q": (lambda v: v is None or 0 <= v <= 1, "in [0, 1]"),
    "symmpo_lam": AT_LEAST_0, "symmpo_gamma": (lambda v: v is None or v >= 0, "0 or more"), "symmpo_eta": AT_LEAST_0,
    "logps_chunk": (lambda v: v >= 0, "0 (off) or more"),
    "lora_rank": (lambda v: v >= 0, "0 (full fine-tuning) or more"), "lora_alpha": (lambda v: v > 0, "positive"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "save_every": (lambda v: v >= 0, "0 (only at the end) or more"), "log_every": AT_LEAST_1,
    "eval_every": (lambda v: v >= 0, "0 (only at the end) or more"), "num_workers": AT_LEAST_0,
    "max_nonfinite": AT_LEAST_1,
}

# what a resumed run may change: how long it runs and how it reports, never what it computes
RESUMABLE = {"max_steps", "epochs", "save_every", "log_every", "eval_every", "num_workers", "report_to"}


def check_config(cfg: Config):
    """Every range, and the options checked on their own."""
    check_limits(cfg, LIMITS)
    if cfg.noise_step is not None and not 0 <= cfg.noise_step < NOISE_STEPS:
        raise UserError(f"--noise-step {cfg.noise_step}: must be a diffusion step in [0, {NOISE_STEPS})")
    for pattern in filter(None, cfg.lora_targets.split(",")):
        try:
            re.compile(pattern)
        except re.error as e:
            raise UserError(f"--lora-targets: {pattern!r} is not a regular expression ({e})") from None
    if cfg.eval_every and not cfg.eval_data:
        raise UserError(f"--eval-every {cfg.eval_every}: evaluates on --eval-data, which is not given")
    if cfg.ref_cache and os.path.isdir(cfg.ref_cache):
        raise UserError(f"--ref-cache {cfg.ref_cache}: is a folder; give a file, e.g. {os.path.join(cfg.ref_cache, 'ref.safetensors')}")


def _parser(defaults: bool = True) -> Parser:
    p = Parser(prog="train.py", description="Multimodal preference optimization of a vision-language model.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Config):
        # a None default says what it stands for in the help text: an empty %(default) hides "(default: None)"
        help = f.metadata["help"] + (" %(default).0s" if f.default is None else "")
        kw = {"help": help, "default": f.default if defaults else argparse.SUPPRESS}
        if f.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.update(type=f.type, choices=f.metadata.get("choices"))
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
    return p


def typed_flags(argv) -> set[str]:
    """The names of the options given on the command line (not left at their defaults)."""
    return set(vars(_parser(defaults=False).parse_args(argv)))


def parse_args(argv=None) -> Config:
    """The command line as a Config, every range checked (the objective's defaults: ``resolve``)."""
    cfg = Config(**vars(_parser().parse_args(argv)))
    check_config(cfg)
    return cfg


def resolve(cfg: Config, typed: set[str] = frozenset()) -> Config:
    """The run's settings: with ``--recipe paper`` the objective's released hyperparameters, except
    the flags in ``typed`` (given on the command line); then the objective's defaults for every
    field left at None. A resumed run's (``resume_config``) were filled in when it started: only
    checked. Options that cannot work together stop here."""
    from mmpo.recipes import OBJECTIVES  # torch: only once the command line has been checked
    if cfg.objective not in OBJECTIVES:
        raise UserError(f"--objective {cfg.objective}: unknown; choose one of {', '.join(OBJECTIVES)}")
    obj = OBJECTIVES[cfg.objective]
    if cfg.recipe == "paper" and not cfg.resume:
        if obj.recipe is None:
            raise UserError(f"--recipe paper: --objective {cfg.objective} has no released configuration; "
                            f"leave --recipe out")
        for name, value in obj.recipe[1].items():
            if name not in typed:
                setattr(cfg, name, value)
    if cfg.lr is None:
        # the papers' rates are for 7B models; a tiny random model needs far larger steps
        cfg.lr = 1e-3 if cfg.model in TINY_MODELS else obj.lr
    if cfg.weight_decay is None:
        cfg.weight_decay = obj.weight_decay
    if cfg.m_prime is None:
        cfg.m_prime = obj.m_prime
    check_config(cfg)
    check_model_path("--model", cfg.model, TINY_MODELS)
    if cfg.report_to == "tensorboard":  # optional: say how to get it, before any model work
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise UserError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from None
    if not obj.reference and (cfg.ref_cache or cfg.refresh_ref_per_stage):
        raise UserError(f"--objective {cfg.objective} has no reference model: leave out "
                        f"{'--ref-cache' if cfg.ref_cache else '--refresh-ref-per-stage'}")
    if cfg.redraw_m_prime and cfg.ref_cache:
        raise UserError("--redraw-m-prime draws a new m' every epoch, --ref-cache needs one fixed m': choose one")
    if cfg.refresh_ref_per_stage and (cfg.curriculum == "none" or cfg.ref_cache):
        raise UserError("--refresh-ref-per-stage needs --curriculum easy-to-hard and a live reference (no --ref-cache)")
    return cfg


def precheck(cfg: Config) -> Config:
    """The refusals that need no model, made before torch is imported (train.py's first lines) so
    that each comes at once: a new run's --out that holds a run, a --resume folder without one, a
    folder another program holds, a data file that is missing or not JSON Lines, a model path that
    is not there. The rest: ``resolve``, ``resume_config``."""
    from mmpo.common.lock import check_free
    from mmpo.rows import check_file
    from mmpo.training.folder import check_out
    if cfg.objective not in OBJECTIVE_NAMES:  # train.run, in a process that added one to OBJECTIVES: resolve checks
        raise UserError(f"--objective {cfg.objective}: unknown; choose one of {', '.join(OBJECTIVE_NAMES)}")
    if cfg.resume:  # the run's own settings: resume_config compares the options given with them
        check_free(cfg.resume)
        run_config(cfg.resume)
        return cfg
    check_out(cfg.out, cfg.overwrite)
    if os.path.isdir(cfg.out):
        check_free(cfg.out)
    for flag, path in (("--data", cfg.data), ("--eval-data", cfg.eval_data)):
        if path:
            check_file(path, flag)
    check_model_path("--model", cfg.model, TINY_MODELS)
    return cfg


def run_config(run: str) -> str:
    """The config.json of the run in ``run`` (--resume), or a one-line refusal."""
    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"--resume {run}: no config.json there, nothing to resume")
    return path


def recipe_line(cfg: Config) -> str:
    """What --recipe paper set, for the start of a run."""
    from mmpo.recipes import OBJECTIVES
    source, values = OBJECTIVES[cfg.objective].recipe
    return f"recipe paper ({source}): " + ", ".join(f"{k}={getattr(cfg, k)}" for k in values)


def resume_config(cfg: Config, typed: set[str], world: int) -> Config:
    """The configuration of the run in ``cfg.resume``, with the options a resumed run may change
    (``RESUMABLE``: how long it runs, how it reports) taken from the command line; any other option
    typed with a different value is an error, never silently ignored. On another number of
    processes ``--grad-accum`` is rescaled to keep the global batch."""
    from mmpo.training.checkpoint import newest_intact
    run = cfg.resume
    with open(run_config(run)) as f:
        fields = json.load(f)
    # options renamed since a run may have been written: old name -> new name
    for old, new in {"corruption": "m_prime", "redraw_corruption": "redraw_m_prime"}.items():
        if old in fields:
            fields[new] = fields.pop(old)
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise UserError(f"--resume {run}: config.json has options this version does not know ({', '.join(unknown)})")
    saved = Config(**{**fields, "resume": run, "out": run})
    if "out" in typed and os.path.abspath(cfg.out) != os.path.abspath(run):
        raise UserError(f"--resume {run} continues in its own folder: leave --out out (got --out {cfg.out})")
    for name in sorted(typed - {"resume", "out", "overwrite"}):
        new, old = getattr(cfg, name), getattr(saved, name)
        if name in RESUMABLE:
            setattr(saved, name, new)
        elif new != old:
            raise UserError(f"--resume {run}: --{name.replace('_', '-')} {new} differs from the run's {old}; a resumed run "
                            f"may change only {', '.join('--' + n.replace('_', '-') for n in sorted(RESUMABLE))}")
    ckpt = newest_intact(run)[0]
    if ckpt:  # none intact: checkpoint.resume says so
        with open(os.path.join(ckpt, "trainer_state.json")) as f:
            saved_world = json.load(f)["world_size"]
        if saved_world != world:  # keep the global batch
            if (saved.grad_accum * saved_world) % world:
                raise UserError(f"--resume {run}: a global batch of {saved.batch_size * saved.grad_accum * saved_world}"
                                f" cannot be split over {world} processes of batch {saved.batch_size}")
            saved.grad_accum = saved.grad_accum * saved_world // world
    return saved
