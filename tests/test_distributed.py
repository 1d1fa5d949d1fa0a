"""FSDP2 on CPU with gloo, two processes under torchrun: the same training as one process.

Two torchrun launches serve every test here (launching is the slow part): one runs each
objective for 3 steps plus the rank-agreement and bf16 checks, the other a killed-and-resumed
run. Single-process counterparts run in this process with the same global batch.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

import train
from conftest import ROOT, assert_identical_runs, metrics
from mmpo import lora
from mmpo.training import checkpoint
from mmpo.data import PreferenceDataset, collate
from mmpo.logps import sequence_logps
from mmpo.tiny import tiny_model

OBJECTIVES = {  # full fine-tuning for napo and symmpo (as their papers), LoRA for the rest
    "dpo": [], "mdpo": [], "mfpo": [], "napo": ["--lora-rank", "0"], "symmpo": ["--lora-rank", "0"],
}
COMMON = ["--max-steps", "3", "--lr", "1e-5", "--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0",
          "--save-every", "0"]


def torchrun(jobs, tmp):
    jobs_path, out = os.path.join(tmp, "jobs.json"), os.path.join(tmp, "results")
    os.makedirs(out, exist_ok=True)
    with open(jobs_path, "w") as f:
        json.dump(jobs, f)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "tests", "dist_worker.py"), jobs_path, out]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    def result(i, rank):
        with open(os.path.join(out, f"{i}-{rank}.json")) as f:
            return json.load(f)
    return result


def weights(out):
    final = os.path.join(out, "final")
    if os.path.isfile(os.path.join(final, "adapter_model.safetensors")):
        return load_file(os.path.join(final, "adapter_model.safetensors"))
    return load_file(os.path.join(final, "model.safetensors"))


@pytest.fixture(scope="module")
def parity(tmp_path_factory, easy_data):
    tmp = str(tmp_path_factory.mktemp("parity"))
    jobs = [{"kind": "train", "args": ["--objective", o, "--data", easy_data, "--batch-size", "2",
                                       "--out", os.path.join(tmp, f"{o}-2"), *COMMON, *extra]}
            for o, extra in OBJECTIVES.items()]
    jobs += [{"kind": "napo_q"}, {"kind": "bf16"}]
    cached = ["--objective", "symmpo", "--data", easy_data, *COMMON, "--lora-rank", "0"]
    bf16 = ["--objective", "mdpo", "--data", easy_data, *COMMON, "--dtype", "bf16", "--activation-checkpointing"]
    jobs += [{"kind": "train", "args": [*cached, "--batch-size", "2", "--out", os.path.join(tmp, "cached-2"),
                                        "--ref-cache", os.path.join(tmp, "ref-2.safetensors")]},
             {"kind": "train", "args": [*bf16, "--batch-size", "2", "--out", os.path.join(tmp, "bf16-2")]}]
    result = torchrun(jobs, tmp)
    assert train.run([*cached, "--batch-size", "4", "--out", os.path.join(tmp, "cached-1"),
                      "--ref-cache", os.path.join(tmp, "ref-1.safetensors")]) == 0
    assert train.run([*bf16, "--batch-size", "4", "--out", os.path.join(tmp, "bf16-1")]) == 0
    for o, extra in OBJECTIVES.items():  # one process, the same global batch of 4
        assert train.run(["--objective", o, "--data", easy_data, "--batch-size", "4",
                          "--out", os.path.join(tmp, f"{o}-1"), *COMMON, *extra]) == 0
    return tmp, result


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_two_processes_match_one(parity, objective):
    tmp, result = parity
    assert result(list(OBJECTIVES).index(objective), 0)["code"] == 0
    one, two = metrics(os.path.join(tmp, f"{objective}-1")), metrics(os.path.join(tmp, f"{objective}-2"))
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (key, a[key], b[key])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert one[-1]["rewards/chosen"] != 0.0  # the steps did move the policy
    w1, w2 = weights(os.path.join(tmp, f"{objective}-1")), weights(os.path.join(tmp, f"{objective}-2"))
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5


def test_consolidated_checkpoints_load_in_one_process(parity, easy_data):
    tmp, _ = parity
    _, proc = tiny_model("tiny-llava")
    ds = PreferenceDataset(easy_data, proc, ("chosen", "rejected"))
    batch = collate([ds[0], ds[1]], ("chosen", "rejected"), proc.tokenizer.pad_token_id)
    outputs = {}
    for world in ("1", "2"):
        lora_model = AutoModelForImageTextToText.from_pretrained(os.path.join(tmp, f"mdpo-{world}", "base_model")).eval()
        lora.load_adapter(lora_model, os.path.join(tmp, f"mdpo-{world}", "final"))
        full_model = AutoModelForImageTextToText.from_pretrained(os.path.join(tmp, f"napo-{world}", "final")).eval()
        with torch.no_grad():
            outputs[world] = (sequence_logps(lora_model, batch)[0], sequence_logps(full_model, batch)[0])
    for a, b in zip(outputs["1"], outputs["2"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    base = AutoModelForImageTextToText.from_pretrained(os.path.join(tmp, "mdpo-2", "base_model")).eval()
    with torch.no_grad():
        assert not torch.allclose(sequence_logps(base, batch)[0], outputs["2"][1])  # trained, not the base


def test_napo_dynamic_q_is_identical_on_every_rank(parity):
    _, result = parity
    i = len(OBJECTIVES)
    r0, r1 = result(i, 0), result(i, 1)
    assert r0 == r1
    # the mean over both ranks' margins [1, 3] and [-2, 10] is 3
    assert r0["q_code"] == pytest.approx(2 * (1 - 1 / (1 + math.exp(-0.5 * 3))), rel=1e-6)
    assert r0["q_paper"] == pytest.approx(1 - 1 / (1 + math.exp(-0.5 * 0.1 * 3)), rel=1e-6)


def test_bf16_policy_computes_in_bf16_and_keeps_fp32_masters(parity):
    _, result = parity
    for rank in (0, 1):
        seen = result(len(OBJECTIVES) + 1, rank)
        assert seen["input"] == seen["output"] == seen["weight"] == "torch.bfloat16"
        assert seen["master"] == ["torch.float32"] and seen["grads"] == ["torch.float32"]
        # the frozen reference copy stored in bf16: half the bytes, the very logits of an fp32-stored one
        assert seen["frozen copy: stored"] == ["torch.bfloat16"] and seen["frozen copy: bytes 16 / 32"] == 0.5
        assert seen["frozen copy: same logits"] is True


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, easy_data):
    tmp = str(tmp_path_factory.mktemp("resume"))
    args = ["--data", easy_data, "--max-steps", "6", "--batch-size", "2", "--grad-accum", "2", "--lora-rank", "0",
            "--lr", "1e-4", "--save-every", "3", "--objective", "mdpo"]
    straight, killed, other = (os.path.join(tmp, n) for n in ("straight", "killed", "other"))
    result = torchrun([
        {"kind": "train", "args": [*args, "--out", straight]},
        {"kind": "train_killed", "args": [*args, "--out", killed], "at": 3},
        {"kind": "train", "args": ["--resume", killed]},
        {"kind": "train_killed", "args": [*args, "--out", other], "at": 3},
    ], tmp)
    assert result(1, 0)["died"] and result(3, 0)["died"]
    # a 2-process checkpoint resumed by one process: DCP reshards the training state
    assert train.run(["--resume", other]) == 0
    return straight, killed, other


def test_resume_from_a_sharded_checkpoint_is_exact(resumed):
    straight, killed, _ = resumed
    assert_identical_runs(straight, killed, 6)
    wa, wb = weights(straight), weights(killed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ckpt = checkpoint.newest_intact(killed)[0]
    assert os.path.isdir(os.path.join(ckpt, "dcp")) and os.path.isfile(os.path.join(ckpt, "rng-1.safetensors"))


def test_resume_on_another_world_size(resumed):
    straight, _, other = resumed
    a, b = metrics(straight), metrics(other)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a[3:], b[3:]):  # no dropout here: only the summation order differs
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
    wa, wb = weights(straight), weights(other)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_reference_cache_built_across_ranks(parity):
    tmp, result = parity
    assert result(len(OBJECTIVES) + 2, 0)["code"] == 0
    one, two = (load_file(os.path.join(tmp, f"ref-{w}.safetensors"))["logps"] for w in (1, 2))
    assert one.shape == two.shape == (32, 5)  # every example once, all five SymMPO views
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)
    for a, b in zip(metrics(os.path.join(tmp, "cached-1")), metrics(os.path.join(tmp, "cached-2"))):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_bf16_with_activation_checkpointing_sharded(parity):
    tmp, result = parity
    assert result(len(OBJECTIVES) + 3, 0)["code"] == 0
    # FSDP's bf16 policy and single-process autocast round differently: equal within bf16's precision
    a, b = metrics(os.path.join(tmp, "bf16-1")), metrics(os.path.join(tmp, "bf16-2"))
    assert len(a) == len(b) == 3 and all(math.isfinite(r["loss"]) for r in a + b)
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-2)
