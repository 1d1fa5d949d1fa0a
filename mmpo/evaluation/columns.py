"""Which model each column of eval.py's table is (eval.py's docstring says how the columns and
their base models are chosen), and loading it. Light at import (no torch): every checkpoint and
base model is identified, and every mistake reported, before any model is loaded.
"""
import json
import os
from dataclasses import dataclass

from mmpo.common.util import check_model_path, looks_like_path
from mmpo.cli import UserError, first_line
from mmpo.constants import TINY_MODELS

@dataclass
class Base:
    """A base model. ``key`` is what it is (two bases with one key are the same weights): a hub
    id, a folder's real path, or a tiny model's name and seed; ``source`` is what loads it and
    ``label`` its short name in the table."""
    key: str
    source: str
    label: str
    origin: str = "--model"  # who named it, for messages

    def describe(self) -> str:
        return self.source if self.label in self.source else f"{self.label} ({self.source})"


@dataclass
class Column:
    """One column of the table: a base model (``weights`` None), or a checkpoint on its base."""
    name: str
    base: Base | None  # None: a model directory that records no base, without --model
    weights: str | None = None  # the folder holding the adapter (``adapter``) or the full model
    adapter: bool = False
    given: str = ""  # --checkpoint as typed, for messages
    run: str | None = None  # the train.py run it comes from (its metrics.jsonl), if any

    def describe(self) -> str:
        base = self.base.describe() if self.base else "no recorded base"
        return base if self.weights is None else f"{self.weights} on {base}"


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object")
    return doc


def run_config(folder: str | None) -> dict | None:
    """The train.py configuration of a run directory (its config.json names an objective and a
    model), else None: a model directory's config.json names neither."""
    path = os.path.join(folder or "", "config.json")
    if folder is None or not os.path.isfile(path):
        return None
    cfg = read_json(path)
    return cfg if "objective" in cfg and "model" in cfg else None


def is_model_dir(folder: str) -> bool:
    path = os.path.join(folder, "config.json")
    return os.path.isfile(path) and "model_type" in read_json(path)


def base_model(name: str, origin: str = "--model") -> Base:
    """The identity of a base model, as --model names it or train.py records it."""
    if name in TINY_MODELS:
        return Base(f"{name} (seed 0)", name, name, origin)  # eval builds tiny models with seed 0
    if os.path.isdir(name):
        folder = os.path.realpath(name)
        run = run_config(os.path.dirname(folder))
        if os.path.basename(folder) == "base_model" and run and run["model"] in TINY_MODELS:
            # train.py's copy of a tiny model, built from (name, seed): every run of that name
            # and seed has the same weights, so they share one base column and one reference
            seed = run.get("seed", 0)
            label = run["model"] if seed == 0 else f"{run['model']}-seed{seed}"
            return Base(f"{run['model']} (seed {seed})", name, label, origin)
        return Base(folder, name, os.path.basename(folder), origin)
    return Base(name, name, name.rsplit("/", 1)[-1], origin)


def check_model(name: str):
    """--model must be loadable by its name, and a base model: not a train.py run."""
    check_model_path("--model", name, tiny=TINY_MODELS)
    if name in TINY_MODELS or not os.path.isdir(name):
        return
    if run_config(name) is not None:
        raise UserError(f"--model {name}: a train.py run, not a base model; give it as --checkpoint {name}")
    if not is_model_dir(name):
        raise UserError(f"--model {name}: not a model directory (its config.json has no model_type)")


def column_name(path: str, run_dir: str | None) -> str:
    """Its folder's name, or its run's: runs/dpo/final -> dpo, runs/dpo/checkpoint-50 -> dpo-checkpoint-50."""
    name = os.path.basename(os.path.abspath(path))
    if run_dir and os.path.realpath(run_dir) != os.path.realpath(path):
        run_name = os.path.basename(os.path.abspath(run_dir))
        return run_name if name == "final" else f"{run_name}-{name}"
    return name


def checkpoint_column(path: str) -> Column:
    """What --checkpoint PATH holds (LoRA adapters or a full model) and the base it was trained on."""
    where = f"--checkpoint {path}"
    if not os.path.exists(path):
        raise UserError(f"{where}: no such directory")
    if not os.path.isdir(path):
        raise UserError(f"{where}: a file, not a train.py output directory")
    run_dir, weights = None, path
    own = run_config(path)
    if own is not None:
        run_dir, weights = path, os.path.join(path, "final")
        if not os.path.isdir(weights):
            hint = ""
            if own.get("lora_rank", 0) > 0 and os.path.isfile(os.path.join(path, "latest")):
                with open(os.path.join(path, "latest")) as f:  # train.py's pointer to its newest checkpoint
                    hint = f"; its latest adapters: --checkpoint {os.path.join(path, f.read().strip())}"
            raise UserError(f"{where}: a train.py run with no final/ yet (still training, or stopped early){hint}")
    elif run_config(os.path.dirname(os.path.abspath(path))) is not None:
        run_dir = os.path.dirname(os.path.abspath(path))
    run = run_config(run_dir)
    recorded, record = None, ""
    adapter = os.path.isfile(os.path.join(weights, "adapter_config.json"))
    if adapter:
        record = os.path.join(weights, "adapter_config.json")
        recorded = read_json(record).get("base_model_name_or_path") or None
        if not os.path.isfile(os.path.join(weights, "adapter_model.safetensors")):
            raise UserError(f"{where}: {record} without the adapter weights (adapter_model.safetensors)")
    elif is_model_dir(weights):
        if run is not None:  # a full model: train.py's config.json names what it started from
            record = os.path.join(run_dir, "config.json")
            recorded = os.path.join(run_dir, "base_model") if run["model"] in TINY_MODELS else run["model"]
    elif os.path.isfile(os.path.join(weights, "trainable.safetensors")):
        raise UserError(f"{where}: a full fine-tuning checkpoint, kept for resuming training; "
                        f"evaluate the run's final/")
    else:
        raise UserError(f"{where}: neither a train.py output nor a model directory "
                        f"(no final/, adapter_config.json or config.json)")
    base = None
    if recorded is not None:
        if looks_like_path(recorded) and not os.path.isdir(recorded):
            raise UserError(f"{where}: its base model {recorded} (named in {record}) is not there")
        base = base_model(recorded, f"the base model of {where}")
    return Column(column_name(path, run_dir), base, weights, adapter, path, run_dir)


def base_names(bases: list[Base]) -> list[str]:
    """'base' for one base model; 'base-<label>' for several, so each can be told apart."""
    if len(bases) == 1:
        return ["base"]
    names = [f"base-{b.label}" for b in bases]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names, 1)]


def resolve_columns(args) -> list[Column]:
    """The base columns, then one column per checkpoint, each with its own base model.

    Without --model each distinct base gets a column (rather than none): a checkpoint's figures
    mean something only next to those of the model it started from."""
    checkpoints = [checkpoint_column(p) for p in args.checkpoint]
    if args.model is not None:
        check_model(args.model)
        given = base_model(args.model)
        for c in checkpoints:
            if c.base is None:  # a model directory with no record: --model is its reference
                c.base = given
            elif c.base.key != given.key:
                raise UserError(f"--checkpoint {c.given} was trained on {c.base.describe()}, not on --model "
                                f"{args.model}: leave --model out to evaluate each checkpoint on its own base")
        bases = [given]
    else:
        distinct = {}
        for c in checkpoints:  # the first checkpoint on each base says where it loads from
            if c.base is not None:
                distinct.setdefault(c.base.key, c.base)
        bases = list(distinct.values())
    for c in checkpoints:
        if c.base is None and (c.adapter or args.data):
            why = "its adapters" if c.adapter else "the implicit rewards on --data"
            raise UserError(f"--checkpoint {c.given}: records no base model, which {why} need: give --model BASE")
    columns = ([] if args.no_base else [Column(n, b) for n, b in zip(base_names(bases), bases)]) + checkpoints
    if not columns:
        raise UserError("no model to evaluate: give --checkpoint, or --model without --no-base")
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        raise UserError(f"two columns share a name: {names}; give the checkpoints distinct directory names")
    return columns


# ---- loading a column's model (heavy: imported when called) --------------------------------

def load(source: str, what: str, trust_remote_code: bool):
    """load_model, every failure (missing files, no network, a model of another kind) one line."""
    from mmpo.models import load_model
    try:
        return load_model(source, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise UserError(f"{what}: cannot load {source} ({first_line(e)})") from None


def load_column(col: Column, trust_remote_code: bool):
    """(model, processor) of a column, in eval mode: a base model, a full model, or a base model
    with a checkpoint's adapters (and the base's processor). Heavy: imports torch."""
    from mmpo import lora
    what = f"--checkpoint {col.given}" if col.weights else col.base.origin
    if col.weights is not None and not col.adapter:
        model, processor = load(col.weights, what, trust_remote_code)
    else:
        model, processor = load(col.base.source, what, trust_remote_code)
        if col.adapter:
            try:
                lora.load_adapter(model, col.weights, dropout=0.0)
            except (OSError, ValueError, RuntimeError, KeyError) as e:
                raise UserError(f"{what}: its adapters do not fit {col.base.describe()} ({first_line(e)})") from None
            check_adapter_loaded(model, col, what)
    return model.eval(), processor


def check_adapter_loaded(model, col: Column, what: str):
    """Every adapter weight found its layer: load_adapter skips the ones that have none, and a
    base whose layers are named otherwise would be evaluated as itself under the checkpoint's name."""
    from safetensors import safe_open
    with safe_open(os.path.join(col.weights, "adapter_model.safetensors"), "pt") as f:
        names = [k.removeprefix("base_model.model.") for k in f.keys()]
    have = model.state_dict()
    unused = [n for n in names if n not in have]
    if not names:
        raise UserError(f"{what}: its adapter_model.safetensors holds no weights")
    if unused:
        raise UserError(f"{what}: {len(unused)} of its {len(names)} adapter weights have no place in "
                        f"{col.base.describe()} (e.g. {unused[0]})")
