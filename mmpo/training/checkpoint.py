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

The data order depends only on (seed, epoch) (``mmpo.training.curriculum.plan``), so with the RNG states
``train.py --resume OUT`` continues with the losses and weights of an uninterrupted run (tested
bit for bit). On another number of processes ``--grad-accum`` is rescaled to keep the global
batch, and only dropout's random stream starts afresh.
"""
import contextlib
import errno
import json
import os
import re
import shutil
import warnings

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from mmpo import lora
from mmpo.cli import UserError, first_line
from mmpo.distributed import Dist, barrier, full_state
from mmpo.files import write_atomic

# frozen weights (the base model under LoRA) are reloaded from the model, never checkpointed
TRAINABLE = StateDictOptions(ignore_frozen_params=True, strict=False)
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def save_weights(model, path: str, state: dict, base_model: str):
    """The consolidated trainable weights: an adapter under LoRA, else trainable.safetensors."""
    os.makedirs(path, exist_ok=True)
    if getattr(model, "lora_config", None):
        lora.save_adapter(model, path, base_model=base_model, state_dict=state)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(path, "trainable.safetensors"))


@contextlib.contextmanager
def saving(target: str, partial: str = ""):
    """Writing ``target`` (into ``partial``, a folder that a failure removes, if given). An OSError,
    or any failure once the disk takes no more (PyTorch's writer says "unexpected pos" for a full
    disk), is one line naming the target and the errno (exit 2)."""
    try:
        yield
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        if partial:
            shutil.rmtree(partial, ignore_errors=True)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        code = re.search(r"\(os error (\d+)\)", str(e))  # safetensors' (Rust's) I/O errors
        err = e if isinstance(e, OSError) else OSError(int(code[1]), "") if code else \
            cannot_write(os.path.dirname(os.path.abspath(target)))
        if err is None or err.errno is None:
            raise
        raise UserError(f"cannot save {target}: {os.strerror(err.errno)} ({errno.errorcode.get(err.errno, err.errno)})"
                        + ("; what was written of it is removed" if partial else "")) from None


def cannot_write(folder: str, size: int = 1 << 20) -> OSError | None:
    """Why ``folder`` takes no ``size`` bytes more (a full disk, a file size limit), or None."""
    probe = os.path.join(folder, ".mmpo-space-probe")
    try:
        with open(probe, "wb") as f:
            f.write(bytes(size))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)
    return None


def save(out: str, step: int, model, optimizer, scheduler, state: dict, d: Dist = Dist(), keep: int = 2):
    """Write OUT/checkpoint-<step> atomically (every rank calls this) and point OUT/latest at it."""
    name = f"checkpoint-{step}"
    final, tmp = os.path.join(out, name), os.path.join(out, f".{name}.tmp")
    with saving(final, tmp):
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
        full = full_state(model, trainable_only=True)
        if d.main:
            save_weights(model, tmp, full, state.get("base_model", ""))
            with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
                json.dump(dict(state, step=step, world_size=d.world, scheduler=scheduler.state_dict()), f, indent=1)
            write_atomic(os.path.join(tmp, MANIFEST), json.dumps(files_in(tmp), indent=1))  # last: vouches for the rest
    if d.main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        with saving(os.path.join(out, "latest")):
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
