"""TRL's DPOTrainer timed on mmpo.bench's model, data and batch: ``python -m mmpo.bench --compare-trl``.

It is the bench's TRL half, kept outside the package because mmpo never imports TRL (no trainer
framework in the package): nothing imports it; the bench runs it by its path, in a process of its
own, when TRL happens to be installed, and it measures as the bench does (mmpo/bench/measure.py). It
builds the same policy as the bench (tiny LLaVA at the same shape, vision tower frozen, fully
fine-tuned), a frozen copy as TRL's reference, the bench's first ``batch_size`` examples as TRL's
conversational records, and trains ``steps + 1`` steps of that one batch with TRL's defaults except
where mmpo's run differs: fp32, no activation checkpointing unless the spec asks for it
(``"checkpointing": true``, as mmpo's --activation-checkpointing; TRL's default is on, mmpo's off), no
truncation, mmpo's learning rate, weight decay, Adam betas and clipping. The first step is the
warm-up, and counted (its FLOPs, as the bench counts its own: the same in every step of one batch);
each later step is timed from TRL's ``on_step_begin`` to ``on_step_end`` (the batch already
collated, as in the bench), with the memory it adds at its peak measured as the bench measures it.

    python compare_trl.py '{"shape": "llava-1.5", "data": ".../answers-200.jsonl", "batch_size": 4, "steps": 3, "device": "cpu"}'

prints one JSON row: step_ms_each, step_ms (median), samples_per_s, peak_mib (added by a step),
process_peak_mib (the process's RSS at its peak), positions_per_example, gflop (a step's matrix
products and attentions).

Trl is not a dependency (`pip install trl` beside
mmpo); without it the bench says so in one line and goes on. In the recorded run trl 1.16.0 was
installed in a separate folder on PYTHONPATH. It gives `datasets` random fingerprints because
hashing an in-memory table failed in the datasets/pyarrow pair pip resolved (nothing is cached).
"""
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import uuid

import torch
import transformers

from mmpo.bench.measure import SHAPES, AddedPeak, Flops
from mmpo.models import freeze_vision_tower
from mmpo.tiny import tiny_llava


def records(path: str, n: int) -> list[dict]:
    """The first ``n`` rows of mmpo's data file as TRL's conversational preference records."""
    folder = os.path.dirname(path)
    with open(path) as f:
        rows = [json.loads(line) for line, _ in zip(f, range(n))]

    def said(text):
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]
    return [{"images": [os.path.join(folder, r["image"])],
             "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["prompt"]}]}],
             "chosen": said(r["chosen"]), "rejected": said(r["rejected"])} for r in rows]


def dataset(rows: list[dict], copies: int):
    """A ``datasets.Dataset`` of ``copies`` x ``rows``, images loaded. Its fingerprints are random:
    hashing an in-memory table fails in some datasets/pyarrow pairs, and nothing here is cached."""
    import datasets.arrow_dataset
    import datasets.fingerprint
    from PIL import Image
    datasets.arrow_dataset.generate_fingerprint = lambda *a, **k: uuid.uuid4().hex
    datasets.fingerprint.Hasher.hash = classmethod(lambda cls, value: uuid.uuid4().hex)
    columns = {k: [r[k] for r in rows] * copies for k in ("prompt", "chosen", "rejected")}
    columns["images"] = [[Image.open(p).convert("RGB") for p in r["images"]] for r in rows] * copies
    return datasets.Dataset.from_dict(columns)


def main(spec: dict) -> dict:
    from trl import DPOConfig, DPOTrainer
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import train  # the checkout's (the bench puts it on the path): the settings a run of train.py has
    cfg = train.resolve(train.Config(objective="dpo"))
    model, processor = tiny_llava(**SHAPES[spec["shape"]])
    freeze_vision_tower(model)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    device = torch.device(spec["device"])
    n = spec["batch_size"]
    args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=n, max_steps=spec["steps"] + 1,
                     learning_rate=cfg.lr, weight_decay=cfg.weight_decay, adam_beta2=cfg.adam_beta2, beta=cfg.beta,
                     max_grad_norm=cfg.max_grad_norm, gradient_checkpointing=spec.get("checkpointing", False),
                     max_length=None, bf16=False,
                     use_cpu=device.type == "cpu", report_to=[], save_strategy="no", logging_steps=10**6,
                     dataloader_num_workers=0, disable_tqdm=True)
    times, peaks, positions, flops = [], [], [], Flops()

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            if not times:  # the warm-up's FLOPs: counting moves the memory a checkpointed step keeps
                flops.__enter__()  # (measure.Flops), so the timed steps and their peaks run uncounted
            self.peak = AddedPeak(device)
            self.peak.start()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - self.t)
            added = self.peak.stop()
            if len(times) == 1:
                flops.__exit__(None, None, None)
            peaks.append(None if added is None else (added, self.peak.base + added))

    def count(module, args, kwargs):  # the language model's positions (padding included), each policy pass
        if torch.is_grad_enabled():
            positions.append(kwargs["inputs_embeds"].shape[0] * kwargs["inputs_embeds"].shape[1])
    model.model.language_model.register_forward_pre_hook(count, with_kwargs=True)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, processing_class=processor,
                         train_dataset=dataset(records(spec["data"], n), spec["steps"] + 1), callbacks=[Clock()])
    trainer.train()
    times, peaks = times[1:], peaks[1:]  # not the warm-up
    step = statistics.median(times)
    peak = None if peaks[0] is None else statistics.median(p[0] for p in peaks)
    total = None if peaks[0] is None else statistics.median(p[1] for p in peaks)
    return {"shape": spec["shape"], "model": "tiny-llava", "objective": "dpo",
            "variant": "TRL DPOTrainer" + (", activation checkpointing" if args.gradient_checkpointing else ""),
            "trl": __import__("trl").__version__, "batch_size": n, "step_ms": step * 1e3, "samples_per_s": n / step,
            "step_ms_each": [t * 1e3 for t in times], "gflop": flops.total / 1e9,
            "peak_mib": None if peak is None else peak / 2**20,
            "process_peak_mib": None if total is None else total / 2**20, "checkpointing": args.gradient_checkpointing,
            "positions_per_example": positions[-1] / n}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
