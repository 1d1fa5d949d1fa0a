"""Checkpoints: written atomically, enough for an exact resume, with one or many processes.

``OUT/checkpoint-<step>/`` holds
- ``dcp/``: the training state (trainable weights and optimizer) in torch.distributed.checkpoint
  format, each rank writing its own shards; DCP reshards on load, so a run can resume on another
  number of processes;
- the consolidated trainable weights for use elsewhere, written by rank 0: a peft-format adapter
  under LoRA, ``trainable.safetensors`` otherwise;
- ``rng-<rank>.safetensors`` and ``trainer_state.json`` (step, scheduler, counters).
It is written under a temporary name, ``manifest.json`` (every file and its size) written last,
then renamed into place; ``OUT/latest`` is replaced (also by rename) to name it, and only then are
older checkpoints rotated away. ``--resume`` takes the newest *intact* checkpoint (its manifest
matches what is on disk), says which newer ones it passed over and why, and stops with one line
when none is intact: a run killed at any moment, or a checkpoint damaged since, never makes a
resumed run start again from step 0.

The data order depends only on (seed, epoch) (``mmpo.curriculum.plan``), so with the RNG states
``train.py --resume OUT`` continues with the losses and weights of an uninterrupted run (tested
bit for bit). On another number of processes ``--grad-accum`` is rescaled to keep the global
batch, and only dropout's random stream starts afresh.
"""
import contextlib
import dataclasses
import json
import os
import re
import shutil
import warnings

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)

from mmpo import lora
from mmpo.cli import UserError, first_line
from mmpo.config import RESUMABLE, Config, check_config
from mmpo.distributed import Dist, barrier
from mmpo.files import atomic_path, write_atomic

# frozen weights (the base model under LoRA) are reloaded from the model, never checkpointed
TRAINABLE = StateDictOptions(ignore_frozen_params=True, strict=False)
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def full_trainable_state(model) -> dict[str, torch.Tensor]:
    """Every trainable weight, gathered whole onto the CPU (a collective under FSDP)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(model, options=opts)


def full_state(model) -> dict[str, torch.Tensor]:
    """Every weight, frozen ones included, gathered whole onto the CPU (for save_pretrained)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_weights(model, path: str, state: dict, base_model: str):
    """The consolidated trainable weights: an adapter under LoRA, else trainable.safetensors."""
    os.makedirs(path, exist_ok=True)
    if getattr(model, "lora_config", None):
        lora.save_adapter(model, path, base_model=base_model, state_dict=state)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(path, "trainable.safetensors"))


def save(out: str, step: int, model, optimizer, scheduler, state: dict, d: Dist = Dist(), keep: int = 2):
    """Write OUT/checkpoint-<step> atomically (every rank calls this) and point OUT/latest at it."""
    name = f"checkpoint-{step}"
    final, tmp = os.path.join(out, name), os.path.join(out, f".{name}.tmp")
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(d)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=TRAINABLE)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(tmp, "dcp"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, os.path.join(tmp, f"rng-{d.rank}.safetensors"))
    full = full_trainable_state(model)
    if d.main:
        save_weights(model, tmp, full, state.get("base_model", ""))
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(dict(state, step=step, world_size=d.world, scheduler=scheduler.state_dict()), f, indent=1)
        write_atomic(os.path.join(tmp, MANIFEST), json.dumps(files_in(tmp), indent=1))  # last: it vouches for the rest
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_atomic(os.path.join(out, "latest"), name)
        # only once this one is complete, and only checkpoints of earlier steps
        old = [x for x in checkpoints(out) if step_of(x) < step]
        for x in old[keep - 1:]:
            shutil.rmtree(os.path.join(out, x), ignore_errors=True)
    barrier(d)
    return final


MANIFEST = "manifest.json"


def files_in(folder: str) -> dict[str, int]:
    """Every file below ``folder`` (its path relative to it) and its size in bytes."""
    return {os.path.relpath(os.path.join(root, n), folder): os.path.getsize(os.path.join(root, n))
            for root, _, names in os.walk(folder) for n in sorted(names)}


def step_of(name: str) -> int:
    return int(name.split("-")[1])


def checkpoints(out: str) -> list[str]:
    """The checkpoint folders of ``out``, newest first."""
    names = [n for n in os.listdir(out) if re.fullmatch(r"checkpoint-\d+", n) and os.path.isdir(os.path.join(out, n))]
    return sorted(names, key=step_of, reverse=True)


def damage(ckpt: str) -> str | None:
    """Why ``ckpt`` cannot be resumed from (a file missing or cut short), or None when it is intact.
    A checkpoint written before manifests existed is judged by the files every checkpoint has."""
    try:
        with open(os.path.join(ckpt, MANIFEST)) as f:
            expected = json.load(f)
    except FileNotFoundError:
        expected = {name: None for name in ("trainer_state.json", os.path.join("dcp", ".metadata"), "rng-0.safetensors")}
    except (OSError, ValueError):
        return f"{MANIFEST} unreadable"
    for name, size in expected.items():
        path = os.path.join(ckpt, name)
        if not os.path.isfile(path):
            return f"{name} missing"
        if size is not None and os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, not {size}"
    return None


def newest_intact(out: str) -> tuple[str | None, list[str]]:
    """The newest intact checkpoint of ``out`` (None if there is none), and why each newer one,
    and one that OUT/latest names but that is gone, was passed over."""
    passed = []
    try:
        with open(os.path.join(out, "latest")) as f:
            named = f.read().strip()
        if not os.path.isdir(os.path.join(out, named)):
            passed.append(f"{named} (named by {os.path.join(out, 'latest')}): missing")
    except OSError:
        pass
    for name in checkpoints(out) if os.path.isdir(out) else []:
        why = damage(os.path.join(out, name))
        if why is None:
            return os.path.join(out, name), passed
        passed.append(f"{name}: {why}")
    return None, passed


def latest(out: str) -> str | None:
    return newest_intact(out)[0]


def load(ckpt: str, model, optimizer, scheduler, d: Dist = Dist()) -> dict:
    """Restore weights, optimizer, scheduler and RNG from ``ckpt``; return trainer_state."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=TRAINABLE)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(ckpt, "dcp"))
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=TRAINABLE)
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        meta = json.load(f)
    scheduler.load_state_dict(meta["scheduler"])
    if meta["world_size"] == d.world:
        rng = load_file(os.path.join(ckpt, f"rng-{d.rank}.safetensors"))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
    elif d.main:  # the data order is the same; only dropout's random stream starts afresh
        print(f"resuming a {meta['world_size']}-process checkpoint on {d.world}: RNG streams are re-seeded")
    return meta


def resume(cfg, model, optimizer, scheduler, lr_at, total_steps: int, reference, d: Dist = Dist()) -> dict:
    """Where a run starts: {"step": 0, "nonfinite": 0} for a new run; under ``--resume``, the latest
    checkpoint's state and the reference of the curriculum stage it was in. Either way the metrics
    log keeps only rows up to that step (a killed run's rows past its checkpoint are redone)."""
    state = {"step": 0, "nonfinite": 0}
    if cfg.resume:
        ckpt, passed = newest_intact(cfg.out)
        if ckpt is None:  # never step 0 in a folder that holds a run
            raise UserError(f"--resume {cfg.out}: no intact checkpoint to resume from ("
                            f"{'; '.join(passed) or 'none was saved'}); --overwrite starts the run afresh")
        if d.main:
            for line in passed:
                print(f"passed over {line}")
        try:
            state = load(ckpt, model, optimizer, scheduler, d)
        except Exception as e:  # intact by its manifest, yet unreadable: never a traceback, never step 0
            raise UserError(f"--resume {cfg.out}: {ckpt} cannot be loaded ({first_line(e)}); move it away to "
                            f"resume from an earlier checkpoint") from None
        step = state["step"]
        if step >= total_steps:
            raise UserError(f"--resume {cfg.out}: the run is already at step {step} of {total_steps}; "
                            f"raise --max-steps or --epochs to train it further")
        # the schedule of this run's length (a longer --max-steps stretches it); for a killed run
        # resumed as it was, this is the learning rate it had, bit for bit
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * lr_at(step)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        reference.restore(step)
        if d.main:
            print(f"resumed from {ckpt} at step {step}")
    if d.main:
        truncate_metrics(os.path.join(cfg.out, "metrics.jsonl"), state["step"])
    return state


def truncate_metrics(path: str, step: int):
    if not os.path.isfile(path):
        return
    rows = []
    with open(path) as f:
        for ln in f:
            try:
                if json.loads(ln)["step"] <= step:
                    rows.append(ln)
            except (ValueError, KeyError):  # a line cut short by the kill
                pass
    write_atomic(path, "".join(rows))


def save_reference(path: str, model, d: Dist = Dist()):
    """The policy's trainable weights at a curriculum stage boundary: the reference from then on."""
    full = full_trainable_state(model)
    if d.main:
        with atomic_path(path) as tmp:  # straight to disk: a full model's weights are never held twice
            save_file({k: v.contiguous() for k, v in full.items()}, tmp)
    barrier(d)


def load_reference(path: str, module, rename=lambda sd: sd):
    """Restore a stage's reference weights into ``module`` (``rename`` maps their names)."""
    set_model_state_dict(module, rename(load_file(path)), options=StateDictOptions(full_state_dict=True, strict=False))


# ---- the run directory: a new run never lands on an old one; a resumed run is the same run ----

# what a run may leave in OUT: nothing else there is ever touched
RUN_NAMES = ("config.json", "metrics.jsonl", "latest", "final", "merged", "base_model", "synthetic", "tensorboard")
RUN_PREFIXES = ("checkpoint-", "reference-", ".checkpoint-")
# a run that got as far as training (config.json is written just before the first step)
STARTED = ("config.json", "metrics.jsonl", "latest", "final")


def claim_out(out: str, overwrite: bool, d: Dist = Dist()):
    """Make ``out`` ready for a new run: refuse one that holds a run unless ``overwrite``; the
    files of that run, or of one that stopped before training (only those), are removed first."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: not a folder")
    old = sorted(n for n in os.listdir(out) if n in RUN_NAMES or n.startswith(RUN_PREFIXES)) if os.path.isdir(out) else []
    if not overwrite and any(n in STARTED or n.startswith("checkpoint-") for n in old):
        shown = ", ".join(old[:4]) + (", ..." if len(old) > 4 else "")
        raise UserError(f"--out {out} already holds a run ({shown}): --resume {out} to continue it, "
                        f"--overwrite to replace it, or choose another --out")
    if d.main:
        try:
            remove_run_files(out)
            os.makedirs(out, exist_ok=True)
            write_atomic(os.path.join(out, ".write-test"), "")  # say now, not at the first checkpoint
            os.remove(os.path.join(out, ".write-test"))
        except OSError as e:
            raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    barrier(d)


def remove(path: str):
    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def remove_run_files(out: str):
    """What a run leaves in ``out`` (``RUN_NAMES``, ``RUN_PREFIXES``): nothing else there is touched."""
    for name in os.listdir(out) if os.path.isdir(out) else []:
        if name in RUN_NAMES or name.startswith(RUN_PREFIXES):
            remove(os.path.join(out, name))


def first_missing(path: str) -> str | None:
    """The outermost folder of ``path`` that does not exist yet (what creating it would create)."""
    top, p = None, os.path.abspath(path)
    while not os.path.exists(p):
        top, p = p, os.path.dirname(p)
    return top


@contextlib.contextmanager
def undone_on_failure(out: str, created: str | None, active: bool):
    """A new run that stops before training (a bad image, a model that will not load, Ctrl-C)
    takes back what it wrote: the folders it created (``created``: the outermost), else what it
    added to the folder that was there (never what was there before)."""
    before = set(os.listdir(out)) if created is None and os.path.isdir(out) else set()
    try:
        yield
    except BaseException:
        if active:
            with contextlib.suppress(OSError):
                added = [created] if created else [os.path.join(out, n) for n in set(os.listdir(out)) - before]
                for path in added:
                    remove(path)
        raise


def write_config(cfg):
    """OUT/config.json: every resolved option of the run, what --resume reads back."""
    write_atomic(os.path.join(cfg.out, "config.json"), json.dumps(vars(cfg), indent=1))


def resume_config(cfg, typed: set[str], world: int):
    """The configuration of the run in ``cfg.resume``, with the options a resumed run may change
    (``RESUMABLE``: how long it runs, how it reports) taken from the command line; any other option
    typed with a different value is an error, never silently ignored."""
    run = cfg.resume
    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"--resume {run}: no config.json there, nothing to resume")
    with open(path) as f:
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
    check_config(saved)
    ckpt = latest(run)
    if ckpt:  # none intact: resume() says so
        with open(os.path.join(ckpt, "trainer_state.json")) as f:
            saved_world = json.load(f)["world_size"]
        if saved_world != world:  # keep the global batch
            if (saved.grad_accum * saved_world) % world:
                raise UserError(f"--resume {run}: a global batch of {saved.batch_size * saved.grad_accum * saved_world}"
                                f" cannot be split over {world} processes of batch {saved.batch_size}")
            saved.grad_accum = saved.grad_accum * saved_world // world
    return saved
