"""Jobs the distributed tests run under ``torchrun --nproc_per_node 2`` (gloo on CPU).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py JOBS.json OUT

JOBS.json is a list of jobs; each is ``{"kind": "train", "args": [...]}`` (a train.py run, all
ranks together), ``{"kind": "train_killed", "args": [...], "at": 3}`` (the run dies right
after its step-3 checkpoint), ``{"kind": "napo_q"}`` or ``{"kind": "bf16"}``. Results that the
test reads are written as JSON to OUT/<job index>-<rank>.json.
"""
import copy
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402
from killing import killed_after_checkpoint  # noqa: E402
from mmpo import distributed  # noqa: E402


def napo_q(d):
    """Each rank sees different margins; the dynamic q must come out identical everywhere."""
    from mmpo.objectives import dynamic_q
    margins = torch.tensor([1.0, 3.0]) if d.rank == 0 else torch.tensor([-2.0, 10.0])
    mean = distributed.global_mean(d)  # what a run passes to napo
    return {"q_code": dynamic_q(margins, alpha=0.5, batch_mean=mean).item(),
            "q_paper": dynamic_q(margins, alpha=0.5, form="paper", batch_mean=mean).item()}


def bf16(d):
    """Shard a tiny LLaVA with the bf16 policy: blocks compute in bf16, the optimizer holds fp32."""
    from mmpo.reference import Reference
    from mmpo.tiny import tiny_model
    model, _ = tiny_model("tiny-llava")
    # the frozen reference copy: stored in fp32 or, as Reference.place stores it, in bf16
    stored32, stored16 = (copy.deepcopy(model).eval().requires_grad_(False) for _ in range(2))
    distributed.shard(stored32, d, bf16=True)
    Reference(model, stored16, d=d).place(bf16=True)
    distributed.shard(model, d, bf16=True)

    def local_bytes(module):  # this rank's shards, read before a forward leaves the root's gathered
        return sum(p.to_local().nbytes for p in module.parameters())
    seen = {"frozen copy: bytes 16 / 32": local_bytes(stored16) / local_bytes(stored32),
            "frozen copy: stored": sorted({str(p.dtype) for p in stored16.parameters()})}
    q_proj = model.model.language_model.layers[0].self_attn.q_proj  # inside a block: gathered while it runs
    q_proj.register_forward_hook(lambda m, i, o: seen.update(
        input=str(i[0].dtype), output=str(o.dtype), weight=str(m.weight.dtype)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, 256, (2, 12))
    out = model(input_ids=ids).logits
    out.float().mean().backward()
    opt.step()
    seen["master"] = sorted({str(p.dtype) for p in model.parameters()})
    seen["grads"] = sorted({str(p.grad.dtype) for p in model.parameters() if p.grad is not None})
    seen["logits"] = str(out.dtype)
    with torch.no_grad():
        seen["frozen copy: same logits"] = torch.equal(stored32(input_ids=ids).logits, stored16(input_ids=ids).logits)
    return seen


def main(jobs_path, out):
    d = distributed.setup()
    with open(jobs_path) as f:
        jobs = json.load(f)
    for i, job in enumerate(jobs):
        result = {}
        if job["kind"] == "train":
            result["code"] = train.run(job["args"])
        elif job["kind"] == "train_killed":
            with killed_after_checkpoint(job["at"]):  # cli.run reports the interruption: status 130
                result["died"] = train.run(job["args"]) == 130
        elif job["kind"] == "napo_q":
            result = napo_q(d)
        elif job["kind"] == "bf16":
            result = bf16(d)
        with open(os.path.join(out, f"{i}-{d.rank}.json"), "w") as f:
            json.dump(result, f)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
