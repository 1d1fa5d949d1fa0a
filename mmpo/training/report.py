"""What a run tells you: metrics rows (metrics.jsonl, and TensorBoard scalars when asked), the
held-out evaluation during training, and the closing summary.

Metric names follow TRL's DPOTrainer where they mean the same (loss, rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins, logps/*, grad_norm, learning_rate,
epoch); held-out figures carry the prefix ``eval/``.
"""
import json
import os

import torch

from mmpo import distributed
from mmpo.data import collate
from mmpo.logps import sequence_logps
from mmpo.recipes import Objective


class MetricsLog:
    """One JSON row per logged step in OUT/metrics.jsonl, mirrored to TensorBoard (rank 0 only)."""

    def __init__(self, out: str, report_to: str = "none", main: bool = True):
        self.file = open(os.path.join(out, "metrics.jsonl"), "a") if main else None
        self.tb = None
        if main and report_to == "tensorboard":  # optional: resolve checked that it is installed
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(out, "tensorboard"))

    def write(self, row: dict):
        if self.file is None:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


@torch.no_grad()
def evaluate(model, eval_set, ref_logps, objective: Objective, options: dict, batch_size: int, pad: int,
             d=distributed.Dist(), autocast=None, *, share_prefix: bool, chunk: int) -> dict:
    """Held-out figures of the current policy: the objective's loss and metrics over the whole set,
    and the conditional accuracy, the fraction with logp(y_w | m) > logp(y_w | m') (the image matters
    to the chosen answer). ``ref_logps(batch)`` gives the reference's ``(N,)``."""
    def score(batch):  # {(id, view): (policy logp, reference logp, length)}
        with autocast or torch.autocast("cpu", enabled=False):
            logps, lengths = sequence_logps(model, batch, None, share_prefix, chunk)
            ref = ref_logps(batch)
        pol, ref, n = (batch.split(t.float().cpu()) for t in (logps, ref, lengths))  # each {view: (n_examples,)}
        return {(i, v): x for v in batch.views for i, x in zip(batch.ids, zip(pol[v].tolist(), ref[v].tolist(), n[v].tolist()))}
    was_training = model.training
    model.eval()
    # an own generator: evaluating mid-run must not draw from the training's RNG (exact resume)
    scores = distributed.score_all(eval_set, batch_size, d, lambda ex: collate(ex, eval_set.views, pad), score,
                                   generator=torch.Generator())
    model.train(was_training)
    ids = sorted({i for i, _ in scores})
    if not ids:
        return {}
    # {view: (n_examples,)} each, in id order
    policy, reference, lengths = ({v: torch.tensor([scores[(i, v)][k] for i in ids]) for v in eval_set.views}
                                  for k in range(3))
    value, metrics = objective.loss(policy, reference, lengths, options)
    out = {"eval/loss": value.mean().item(), **{f"eval/{k}": float(v) for k, v in metrics.items()}}
    out["eval/cond_acc"] = (policy["chosen"] > policy["chosen_on_corrupt"]).float().mean().item()
    out["eval/examples"] = len(ids)
    return out


def summary(step: int, samples: int, seconds: float, last: dict, evals: list[dict], out: str, final: str,
            start: int = 0) -> str:
    """The closing lines of a run: how much it trained (a resumed run: from ``start``, in this
    process), its last figures, the best held-out ones."""
    done = f"{step} steps, {samples} samples in {seconds:.0f} s" if not start else \
        f"step {step}, resumed at step {start}: {step - start} steps, {samples} samples in {seconds:.0f} s"
    lines = [f"done: {done}"]
    if last:
        rewards = (f", reward accuracy {last['rewards/accuracies']:.3f}, margin {last['rewards/margins']:.4f}"
                   if "rewards/accuracies" in last else "")  # SFT has no rewards
        lines.append(f"last step: loss {last['loss']:.4f}{rewards}")
    if evals:
        e = evals[-1]
        best = min(evals, key=lambda r: r["eval/loss"])
        rewards = (f", reward accuracy {e['eval/rewards/accuracies']:.3f}" if "eval/rewards/accuracies" in e else "")
        lines.append(f"held-out ({e['eval/examples']} examples) at step {e['step']}: loss {e['eval/loss']:.4f}{rewards}, "
                     f"conditional accuracy {e['eval/cond_acc']:.3f}; best loss {best['eval/loss']:.4f} at step {best['step']}")
    lines.append(f"metrics: {os.path.join(out, 'metrics.jsonl')}  model: {final}")
    return "\n".join(lines)
