"""train.py end to end on tiny models: every objective learns, resume is exact, the reference
cache matches live passes, a saved model trains through --model DIR, bad input fails cleanly."""
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import ROOT, assert_identical_runs, metrics, train_killed_after, write_jsonl
from mmpo import reference
from mmpo.training import checkpoint
from mmpo.training.config import parse_args, resolve, typed_flags
from mmpo.distributed import Dist
from mmpo.tiny import tiny_model

FAST = ["--batch-size", "4", "--save-every", "0", "--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0"]


def run_ok(*args):
    assert train.run([str(a) for a in args]) == 0


@pytest.mark.parametrize("objective,extra", [
    ("dpo", []), ("mdpo", []), ("mfpo", []), ("napo", ["--lora-rank", "0", "--lr", "3e-4"]),
    ("symmpo", ["--lora-rank", "0", "--lr", "3e-4"]),
])
def test_every_objective_learns_the_easy_preference(objective, extra, easy_data, tmp_path):
    run_ok("--objective", objective, "--data", easy_data, "--out", tmp_path, "--max-steps", 6, *FAST, *extra)
    rows = metrics(tmp_path)
    assert len(rows) == 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # policy == reference at step 1: every margin is exactly 0, so no pair is "won" yet
    assert rows[0]["rewards/accuracies"] == 0.0
    assert rows[-1]["rewards/accuracies"] == 1.0
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert os.path.isfile(tmp_path / "final" / ("adapter_model.safetensors" if not extra else "model.safetensors"))
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["objective"] == objective and cfg["m_prime"] == {"symmpo": "contrast", "mfpo": "noise"}.get(objective, "crop")


def test_sft_trains_the_chosen_answers_with_no_reference(easy_data, tmp_path, monkeypatch):
    # SFT has no reference model: under full fine-tuning no frozen copy may be made
    fail = lambda *a: pytest.fail("SFT built a reference model")  # noqa: E731
    monkeypatch.setattr(reference, "copy", types.SimpleNamespace(deepcopy=fail, copy=fail))  # the reference's copies only
    run_ok("--objective", "sft", "--data", easy_data, "--out", tmp_path, "--max-steps", 6, "--batch-size", 4,
           "--save-every", 0, "--lora-rank", 0)
    rows = metrics(tmp_path)
    # every chosen answer is "A blue picture." + end of sequence: 16 tokens, so the per-token
    # loss is the summed log-prob over 16; a random model starts near log(vocabulary) = log(260)
    for r in rows:
        assert r["loss"] == pytest.approx(-r["logps/chosen"] / 16, rel=1e-5)
        assert not any(k.startswith("rewards/") for k in r)
    assert rows[0]["loss"] == pytest.approx(math.log(260), rel=0.1) and rows[-1]["loss"] < rows[0]["loss"] - 1.5
    assert os.path.isfile(tmp_path / "final" / "model.safetensors")
    assert cli("--objective", "sft", "--data", easy_data, "--out", tmp_path / "cached", "--ref-cache",
               tmp_path / "ref.safetensors").stderr.strip() == \
        "error: --objective sft has no reference model: leave out --ref-cache"


def sft_mix(tmp_path):
    """LLaVA-1.5's SFT mix in small: image + question, text only (no image), image only (empty prompt)."""
    colors = ["red", "green", "blue", "yellow"]
    rows = []
    for i, c in enumerate(colors):
        rows += [{"id": f"i{i}", "image": f"img/{i}.png", "prompt": "What color is it?", "chosen": f"It is {c}."},
                 {"id": f"t{i}", "prompt": f"Name a {c} fruit.", "chosen": "A cherry." if i % 2 else "A lemon."},
                 {"id": f"o{i}", "image": f"img/{i}.png", "prompt": "", "chosen": f"A {c} picture."}]
    return write_jsonl(tmp_path / "sft.jsonl", rows)


def test_sft_trains_on_text_only_and_image_only_rows(tmp_path, image_dir):
    data = sft_mix(tmp_path)  # its images: image_dir's
    run_ok("--objective", "sft", "--data", data, "--out", tmp_path / "o", "--max-steps", 6, "--batch-size", 4,
           "--save-every", 0)  # under LoRA the frozen image path is encoded once per batch (train_step's step 1)
    rows = metrics(tmp_path / "o")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["logps/chosen"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5  # a random model starts near log(260) = 5.6 per token
    # under torchrun a rank whose batch has no image would skip the vision tower's FSDP gathers: refused
    argv = ["--objective", "sft", "--data", data, "--out", str(tmp_path / "d")]
    with pytest.raises(train.UserError) as e:
        train.load_data(resolve(parse_args(argv), typed_flags(argv)), ("chosen",), Dist(rank=0, world=2))
    assert str(e.value).startswith(f"{data}:2: field 'image': missing; rows without an image train in one process only")


def test_metrics_and_config_are_written(easy_data, tmp_path):
    run_ok("--data", easy_data, "--out", tmp_path, "--max-steps", 2, "--log-every", 2, *FAST)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [2]
    for key in ("loss", "learning_rate", "samples_per_s", "grad_norm", "rewards/chosen", "rewards/image_accuracies",
                "logps/rejected", "epoch", "stage", "elapsed_s"):
        assert key in rows[0]
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["lr"] == 1e-3 and cfg["weight_decay"] == 0.0 and cfg["lora_rank"] == 8


@pytest.mark.parametrize("lora_rank", ["8", "0"])
def test_resume_after_a_kill_is_exact(easy_data, tmp_path, lora_rank):
    args = ["--data", easy_data, "--max-steps", "6", "--batch-size", "4", "--lora-rank", lora_rank,
            "--lora-dropout", "0.1", "--grad-accum", "2", "--save-every", "3"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_ok(*args, "--out", straight)

    train_killed_after(3, [*args, "--out", killed])
    assert checkpoint.newest_intact(str(killed))[0].endswith("checkpoint-3") and len(metrics(killed)) == 3
    run_ok("--resume", killed)

    assert_identical_runs(straight, killed, 6)
    wa = load_file(os.path.join(checkpoint.newest_intact(str(straight))[0], "adapter_model.safetensors" if lora_rank != "0" else "trainable.safetensors"))
    wb = load_file(os.path.join(checkpoint.newest_intact(str(killed))[0], "adapter_model.safetensors" if lora_rank != "0" else "trainable.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_reference_cache_matches_live_and_is_rebuilt_when_stale(easy_data, tmp_path, capsys):
    live, cached = tmp_path / "live", tmp_path / "cached"
    cache = tmp_path / "ref.safetensors"
    common = ["--data", easy_data, "--max-steps", "3", "--batch-size", "4", "--lora-rank", "0", "--lr", "3e-4"]
    run_ok(*common, "--out", live)
    run_ok(*common, "--out", cached, "--ref-cache", cache)
    for ra, rb in zip(metrics(live), metrics(cached)):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
        assert ra["rewards/margins"] == pytest.approx(rb["rewards/margins"], abs=1e-5)
    stamp = os.path.getmtime(cache)
    run_ok(*common, "--out", tmp_path / "again", "--ref-cache", cache)
    assert os.path.getmtime(cache) == stamp  # a matching cache is reused, not recomputed
    assert "rebuilding" not in capsys.readouterr().out

    changed = tmp_path / "changed.jsonl"
    rows = [json.loads(line) for line in open(easy_data)]
    rows[0]["chosen"] = "A different answer."
    for r in rows:
        for k in ("image", "contrast_image"):
            r[k] = os.path.join(os.path.dirname(easy_data), r[k])
    write_jsonl(changed, rows)
    run_ok(*common[2:], "--data", changed, "--out", tmp_path / "changed", "--ref-cache", cache)
    assert "does not match this model and data: rebuilding" in capsys.readouterr().out
    assert os.path.getmtime(cache) != stamp


def test_reference_cache_notices_new_weights_under_the_same_config(easy_data, tmp_path, capsys):
    cache, model_dir = tmp_path / "ref.safetensors", tmp_path / "m"
    args = ["--data", easy_data, "--max-steps", "1", "--batch-size", "4", "--lora-rank", "0", "--model", model_dir,
            "--ref-cache", cache]
    for seed, out in ((0, "a"), (1, "b")):  # the same directory, the same config, other weights
        model, proc = tiny_model("tiny-llava", seed=seed)
        model.save_pretrained(model_dir)
        proc.save_pretrained(model_dir)
        run_ok(*args, "--out", tmp_path / out)
    assert "does not match this model and data: rebuilding" in capsys.readouterr().out


def test_a_saved_model_trains_through_model_dir(easy_data, tmp_path):
    model, proc = tiny_model("tiny-qwen2vl", seed=1)
    model.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    run_ok("--model", tmp_path / "m", "--data", easy_data, "--out", tmp_path / "run", "--max-steps", 2, *FAST,
           "--merge")
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    assert cfg["lr"] == 1e-5  # a real model gets the paper's learning rate
    adapter = json.load(open(tmp_path / "run" / "final" / "adapter_config.json"))
    assert adapter["base_model_name_or_path"] == str(tmp_path / "m")
    assert os.path.isfile(tmp_path / "run" / "merged" / "model.safetensors")


def test_nonfinite_losses_skip_steps_then_stop(easy_data, tmp_path, monkeypatch, capsys):
    from mmpo.recipes import OBJECTIVES
    real = OBJECTIVES["mdpo"]
    nan_loss = lambda *a, **k: (real.fn(*a, **k)[0] * float("nan"), real.fn(*a, **k)[1])
    monkeypatch.setitem(OBJECTIVES, "mdpo", real._replace(fn=nan_loss))
    code = train.run(["--data", easy_data, "--out", str(tmp_path), "--max-steps", "5", "--max-nonfinite", "3", *FAST])
    err = capsys.readouterr()
    assert code == 2
    assert "step 1: non-finite loss, step skipped (1 in a row)" in err.out + err.err
    assert "3 non-finite losses in a row" in err.err


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_bad_data_is_one_line_per_problem_exit_2(tmp_path, image_dir):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = {"image": "img/0.png", "prompt": "Q?", "chosen": "yes", "rejected": "no"}
    rows = [good, "{oops", {**good, "rejected": ""}, {**good, "image": "img/none.png"}, {**good, "image": "broken.jpg"}]
    rows += [{**good, "id": f"ex{i}"} for i in range(30)] + [{**good, "id": "ex3"}]  # a duplicate id on line 36
    rows += ["not json"] * 20
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    r = cli("--data", path, "--out", tmp_path / "o")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {path}:2: invalid JSON")
    assert lines[1] == f"error: {path}:3: field 'rejected': must be a non-empty string"
    assert lines[2].startswith(f"error: {path}:4: field 'image': image file not found")
    assert lines[3].startswith(f"error: {path}:5: field 'image': cannot decode image")
    assert lines[4] == f"error: {path}:36: field 'id': duplicate id 'ex3' (first on line 9)"
    assert len(lines) == 21 and lines[-1] == "... and 5 more errors"  # the first 20, then a count
    assert not os.path.exists(tmp_path / "o")  # a run that stops before training leaves nothing behind


def test_bad_data_a_row_without_an_image_is_for_sft_only(tmp_path, image_dir, capsys):
    good = {"image": "img/0.png", "prompt": "Q?", "chosen": "yes", "rejected": "no"}
    path = write_jsonl(tmp_path / "d.jsonl", [good, {k: v for k, v in good.items() if k != "image"}])
    assert train.run(["--objective", "dpo", "--data", path, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"error: {path}:2: field 'image': missing\n"
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("args,message", [
    (["--objective", "ppo"], "error: --objective ppo: unknown; choose one of dpo, mdpo, mfpo, napo, symmpo, sft"),
    (["--data", "/nonexistent/d.jsonl"], "error: --data /nonexistent/d.jsonl: no such file"),
    (["--model", "/nonexistent/model"], "error: --model /nonexistent/model: no such directory"),
    (["--model", "./no-such-dir"], "error: --model ./no-such-dir: no such directory"),
    (["--resume", "/nonexistent/run"], "error: --resume /nonexistent/run: no config.json there"),
    (["--objective", "mfpo", "--mfpo-weights", "1,x"], "error: --mfpo-weights: expected 3 comma-separated numbers"),
    (["--redraw-m-prime", "--ref-cache", "r.safetensors"], "error: --redraw-m-prime draws a new m' every epoch"),
    (["--lora-targets", "no_such_layer"], "error: --lora-targets no_such_layer: no Linear module of tiny-llava matches"),
])
def test_user_errors_are_one_line_exit_2(args, message, tmp_path):
    r = cli(*args, "--out", tmp_path / "o")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bf16_autocast_with_activation_checkpointing(easy_data, tmp_path):
    run_ok("--data", easy_data, "--out", tmp_path, "--max-steps", 2, "--dtype", "bf16", "--activation-checkpointing",
           "--warmup", 0, *FAST)  # no warmup: the first step is not at rate 0
    rows = metrics(tmp_path)
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[1]["rewards/chosen"] != 0.0  # the step changed the policy


def test_overlong_samples_are_reported_skipped_and_counted(tmp_path, image_dir, capsys):
    rows = [{"id": f"r{i}", "image": f"img/{i % 4}.png", "prompt": "Q?", "chosen": "yes", "rejected": "no"} for i in range(9)]
    rows[5]["prompt"] = "a very long question " * 10
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    run_ok("--data", path, "--out", tmp_path / "o", "--epochs", 1, "--max-length", 80, *FAST)
    out = capsys.readouterr().out
    # checked once before training, and left out of the schedule: 8 trainable examples, 2 full steps
    assert f"skipped 1 of 9 examples: prompt and image take --max-length 80 tokens or more (first: {path}:6: prompt " \
           "and image take" in out
    assert len(metrics(tmp_path / "o")) == 2


def test_a_run_with_nothing_to_train_stops_before_any_step(tmp_path, image_dir):
    """Every example longer than --max-length: an error, not "done" with an untrained model."""
    rows = [{"id": f"r{i}", "image": f"img/{i % 4}.png", "prompt": "Q?", "chosen": "yes", "rejected": "no"} for i in range(8)]
    r = cli("--data", write_jsonl(tmp_path / "d.jsonl", rows), "--out", tmp_path / "o", "--max-length", 20)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: all 8 examples are longer than --max-length 20 before their answer (e.g. ")
    assert r.stderr.strip().endswith("nothing to train; raise --max-length")
    assert not os.path.exists(tmp_path / "o" / "final") and not os.path.exists(tmp_path / "o" / "metrics.jsonl")


def test_loader_workers_change_nothing(easy_data, tmp_path):
    for workers in ("0", "2"):
        run_ok("--data", easy_data, "--out", tmp_path / workers, "--max-steps", 3, "--num-workers", workers, *FAST)
    assert_identical_runs(tmp_path / "0", tmp_path / "2", 3)


def test_the_default_job_runs_with_no_arguments(tmp_path):
    """The README's run command, exactly: mDPO on the built-in data with tiny LLaVA (~1 min)."""
    r = cli(cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "runs" / "default"
    assert r.stdout.splitlines()[-3].startswith("done: 96 steps, 768 samples in ")
    assert r.stdout.splitlines()[-1] == f"metrics: {os.path.join('runs', 'default', 'metrics.jsonl')}  model: " \
        f"{os.path.join('runs', 'default', 'final')}"
    rows = metrics(out)
    assert len(rows) == 96 and json.load(open(out / "config.json"))["objective"] == "mdpo"
    first, last = rows[:16], rows[-16:]
    mean = lambda rs, k: sum(x[k] for x in rs) / len(rs)  # noqa: E731
    assert mean(last, "rewards/accuracies") > mean(first, "rewards/accuracies") + 0.2
    assert mean(last, "rewards/image_accuracies") > mean(first, "rewards/image_accuracies") + 0.2
    assert os.path.isfile(out / "final" / "adapter_model.safetensors")
    again = cli("--max-steps", "1", cwd=tmp_path)  # the same command again must not write over the run
    assert again.returncode == 2 and "error: --out runs/default already holds a run" in again.stderr


def test_bf16_reference_cache_is_computed_in_bf16(easy_data, tmp_path):
    """Under --dtype bf16 the cache is computed under the same autocast as the policy's passes,
    so at step 1 (policy == reference) every log-ratio is ~0, as with a live reference; an fp32
    cache against a bf16 policy starts with a spurious margin of bf16's rounding error."""
    args = ["--data", easy_data, "--max-steps", "1", "--batch-size", "4", "--lora-rank", "0", "--dtype", "bf16"]
    run_ok(*args, "--out", tmp_path / "live")
    run_ok(*args, "--out", tmp_path / "cached", "--ref-cache", tmp_path / "ref.safetensors")
    live, cached = metrics(tmp_path / "live")[0], metrics(tmp_path / "cached")[0]
    assert live["rewards/chosen"] == 0.0 and live["rewards/rejected"] == 0.0
    # beta * log-ratio; with an fp32 cache they were ~1e-3 and the loss 1.3e-3 off (mDPO, logps ~ -90)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/chosen_on_corrupt"):
        assert abs(cached[k]) < 2e-4, (k, cached[k])
    assert cached["loss"] == pytest.approx(live["loss"], abs=2e-4)


def test_recipe_paper_sets_the_released_hyperparameters(easy_data, tmp_path, capsys):
    """--recipe paper: mDPO's released configuration (bunny/config.yaml), except flags typed."""
    def configured(*argv):  # what train.py does: the command line, then the objective's recipe and defaults
        return resolve(parse_args(list(argv)), typed_flags(list(argv)))
    cfg = configured("--objective", "mdpo", "--recipe", "paper", "--epochs", "1")
    assert (cfg.lr, cfg.weight_decay, cfg.adam_beta2, cfg.warmup, cfg.batch_size, cfg.grad_accum) == (1e-5, 0.05, 0.98, 0.1, 4, 8)
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.dtype, cfg.epochs) == (64, 128.0, "bf16", 1)  # --epochs typed: kept
    napo = configured("--objective", "napo", "--recipe", "paper")
    assert (napo.lr, napo.epochs, napo.lora_rank, napo.weight_decay, napo.batch_size, napo.grad_accum) == (5e-7, 4, 0, 0.01, 1, 4)
    # one released 4-epoch block (pipeline.sh): its weights, dynamic q in the code's form, alpha 0.5 / 0.01
    assert (napo.napo_weights, napo.napo_q, napo.napo_q_form, napo.napo_alpha) == ("0.02,0.49,0.49", None, "code", "0.5,0.01")
    sym = configured("--objective", "symmpo", "--recipe", "paper")
    # gamma None: the released 1e-4 (h1 - h2)^2 whichever --symmpo-margin-form (objectives.symmpo)
    assert (sym.lr, sym.warmup, sym.max_steps, sym.lora_rank, sym.symmpo_gamma) == (5e-6, 0.05, 670, 0, None)
    practical = configured("--objective", "mdpo")
    assert (practical.adam_beta2, practical.grad_accum, practical.dtype) == (0.999, 1, "fp32")
    # end to end: printed at the start, recorded in config.json
    run_ok("--objective", "dpo", "--recipe", "paper", "--data", easy_data, "--out", tmp_path, "--max-steps", 1,
           "--batch-size", 2, "--grad-accum", 2, "--dtype", "fp32", "--lora-dropout", "0")
    assert "recipe paper (mDPO's DPO baseline: luka-group/mDPO bunny/config.yaml): lr=1e-05" in capsys.readouterr().out
    saved = json.load(open(tmp_path / "config.json"))
    assert (saved["recipe"], saved["lr"], saved["adam_beta2"], saved["weight_decay"], saved["grad_accum"]) == \
        ("paper", 1e-5, 0.98, 0.05, 2)


def test_the_optimizer_follows_hf_trainer(tmp_path):
    """The released runs all use HF Trainer: no weight decay on biases and norm weights (its own
    get_decay_parameter_names decides the same parameters), and warmup over ceil(ratio x steps)
    steps from a rate of 0, as transformers' get_cosine_schedule_with_warmup."""
    from transformers import Trainer, get_cosine_schedule_with_warmup
    model = tiny_model("tiny-qwen2vl")[0]  # biases (qkv), RMSNorms (input_layernorm, model.norm), LayerNorms (vision)
    cfg = resolve(parse_args(["--objective", "napo", "--lr", "1e-3"]), {"lr"})
    def make(cfg, steps):
        return train.make_optimizer(train.param_groups(model, cfg), cfg, steps)
    optimizer = make(cfg, 10)[0]
    decayed, exempt = [{id(p) for p in g["params"]} for g in optimizer.param_groups]
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in decayed} == set(Trainer.get_decay_parameter_names(None, model))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert "model.language_model.norm.weight" in {names[i] for i in exempt}
    assert "model.language_model.layers.0.self_attn.q_proj.bias" in {names[i] for i in exempt}
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in {names[i] for i in decayed}
    everything = train.param_groups(model, resolve(parse_args(["--decay-all"]), set()))
    assert len(everything) == 1 and len(everything[0]["params"]) == len(names)

    for steps, ratio in [(10, 0.1), (7, 0.05), (100, 0.03), (5, 0.0), (3, 0.5)]:
        cfg.warmup = ratio
        ours = make(cfg, steps)[1]
        theirs = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=1e-3), math.ceil(ratio * steps), steps)
        rates = []
        for _ in range(steps):
            rates.append((ours.get_last_lr()[0], theirs.get_last_lr()[0]))
            ours.optimizer.step(), ours.step(), theirs.optimizer.step(), theirs.step()
        assert all(a == pytest.approx(b, abs=1e-12) for a, b in rates), (steps, ratio)
    cfg.warmup = 0.05
    rates = [make(cfg, 7)[2](k) for k in range(3)]  # ceil(0.35) = 1 warmup step, not int() = 0
    assert rates[0] == 0 and rates[1] == 1.0 and rates[2] == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))


def test_a_new_run_never_lands_on_an_old_one(easy_data, tmp_path):
    out = tmp_path / "run"
    args = ["--data", easy_data, "--out", out, "--max-steps", 1, *FAST]
    run_ok(*args)
    (out / "notes.txt").write_text("mine")
    r = cli(*args)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: --out {out} already holds a run (base_model, checkpoint-1, config.json, final, ...): "
        f"--resume {out} to continue it, --overwrite to replace it, or choose another --out")
    run_ok(*args, "--overwrite", "--max-steps", 2)
    assert [r["step"] for r in metrics(out)] == [1, 2]  # the old run's log is gone, not appended to
    assert sorted(os.listdir(out)) == ["base_model", "checkpoint-2", "config.json", "final", "latest", "metrics.jsonl",
                                       "notes.txt"]  # only the run's own files were replaced
    (tmp_path / "file").write_text("")
    assert "error: --out " + str(tmp_path / "file") + ": not a folder" in cli(*args[:-4], "--out", tmp_path / "file").stderr
    r = cli("--out", tmp_path / "file" / "run")  # cannot be created: said with the option, not a bare [Errno 20]
    assert r.returncode == 2 and r.stderr.strip() == f"error: --out {tmp_path / 'file' / 'run'}: cannot write there (Not a directory)"


def test_resume_applies_what_may_change_and_refuses_the_rest(easy_data, tmp_path):
    out = tmp_path / "run"
    run_ok("--data", easy_data, "--out", out, "--max-steps", 2, "--epochs", 2, *FAST)
    # --max-steps extends a finished run: it trains steps 3 and 4, and says so in config.json
    run_ok("--resume", out, "--max-steps", 4, "--log-every", 2)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 4]
    assert json.load(open(out / "config.json"))["max_steps"] == 4
    # the schedule is the 4-step one from the first resumed step on (not the 2-step one's final 0):
    # warmup ceil(0.1 x 4) = 1 step, so step 4 is 2/3 of the way through the cosine
    assert rows[2]["learning_rate"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 3)), rel=1e-6)
    r = cli("--resume", out, "--max-steps", 3)
    assert r.returncode == 2 and r.stderr.strip() == (f"error: --resume {out}: the run is already at step 4 of 3; "
                                                      "raise --max-steps or --epochs to train it further")
    for flag, value, saved in (("--lr", "0.5", "0.001"), ("--objective", "dpo", "mdpo"), ("--data", "x.jsonl", easy_data)):
        r = cli("--resume", out, flag, value)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"error: --resume {out}: {flag} {value} differs from the run's {saved}; a resumed run "
                                   "may change only --epochs, --eval-every, --log-every, --max-steps"), r.stderr
    r = cli("--resume", out, "--lr", "0.001")  # the same value is no change: it gets as far as the step check
    assert r.returncode == 2 and "the run is already at step 4 of 4" in r.stderr
    # a run written before --corruption became --m-prime resumes under the new names
    saved = json.load(open(out / "config.json"))
    old = {("corruption" if k == "m_prime" else "redraw_corruption" if k == "redraw_m_prime" else k): v
           for k, v in saved.items()}
    (out / "config.json").write_text(json.dumps(old))
    run_ok("--resume", out, "--max-steps", 5)
    now = json.load(open(out / "config.json"))
    assert now["m_prime"] == "crop" and now["redraw_m_prime"] is False and "corruption" not in now
    assert [r["step"] for r in metrics(out)] == [1, 2, 4, 5]
    (out / "config.json").write_text(json.dumps({**now, "frobnicate": 1}))  # from a newer version, say
    r = cli("--resume", out, "--max-steps", 6)
    assert r.returncode == 2 and r.stderr.strip() == \
        f"error: --resume {out}: config.json has options this version does not know (frobnicate)"


def test_held_out_evaluation_during_training(easy_data, tmp_path, capsys):
    """--eval-data: the objective's loss, reward accuracy and the conditional accuracy on held-out
    pairs, logged as eval/* every --eval-every steps and at the end; epoch, stage and time on
    every row; a closing summary with the best held-out loss."""
    run_ok("--data", easy_data, "--eval-data", easy_data, "--eval-every", 2, "--out", tmp_path, "--max-steps", 3, *FAST)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert ["eval/loss" in r for r in rows] == [False, True, True]
    for r in rows[1:]:
        assert r["eval/examples"] == 32 and 0 <= r["eval/cond_acc"] <= 1 and 0 <= r["eval/rewards/accuracies"] <= 1
        assert r["eval/loss"] > 0 and r["epoch"] == 0 and r["stage"] == 0 and r["elapsed_s"] > 0
    assert rows[2]["eval/loss"] < rows[1]["eval/loss"]  # the same easy pairs: held-out loss falls as training goes
    out = capsys.readouterr().out
    best = min(rows[1:], key=lambda r: r["eval/loss"])
    assert f"best loss {best['eval/loss']:.4f} at step {best['step']}" in out and "done: 3 steps, 12 samples" in out


def test_held_out_evaluation_with_a_reference_cache_equals_live(easy_data, tmp_path):
    common = ["--data", easy_data, "--eval-data", easy_data, "--max-steps", 2, "--batch-size", 4, "--lora-rank", 0,
              "--lr", "3e-4"]
    run_ok(*common, "--out", tmp_path / "live")
    run_ok(*common, "--out", tmp_path / "cached", "--ref-cache", tmp_path / "ref.safetensors")
    live, cached = metrics(tmp_path / "live")[-1], metrics(tmp_path / "cached")[-1]
    for k in ("eval/loss", "eval/rewards/margins", "eval/rewards/accuracies", "eval/cond_acc"):
        assert cached[k] == pytest.approx(live[k], abs=1e-5), k
    assert os.path.isfile(tmp_path / "ref.safetensors.eval")


def test_tensorboard_is_optional_and_said_so(easy_data, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        r = cli("--data", easy_data, "--out", tmp_path / "o", "--report-to", "tensorboard")
        assert r.returncode == 2
        assert r.stderr.strip() == "error: --report-to tensorboard needs the tensorboard package: pip install tensorboard"
        return
    run_ok("--data", easy_data, "--out", tmp_path / "o", "--max-steps", 1, "--report-to", "tensorboard", *FAST)
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "o" / "tensorboard"))


def test_help_and_option_errors_answer_before_torch_loads(tmp_path):
    code = ("import runpy, sys; sys.argv = ['train.py', *sys.argv[1:]]\n"
            "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
            "except SystemExit as e:\n    print('torch' in sys.modules, e.code)\n")
    for args, want in ((["--help"], "False 0"), (["--batch-size", "0"], "False 2")):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.stdout.strip().splitlines()[-1] == want, r.stdout + r.stderr
    r = cli("--batch-size", "0")
    assert r.returncode == 2 and r.stderr.strip() == "error: --batch-size 0: must be at least 1"


@pytest.mark.parametrize("args,message", [
    (["--grad-accum", "0"], "--grad-accum 0: must be at least 1"),
    (["--lr=-1e-3"], "--lr -0.001: must be positive"),
    (["--lora-rank", "-1"], "--lora-rank -1: must be 0 (full fine-tuning) or more"),
    (["--warmup", "2"], "--warmup 2.0: must be a fraction in [0, 1)"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--noise-step", "1000"], "--noise-step 1000: must be a diffusion step in [0, 1000)"),
    (["--lora-dropout", "1"], "--lora-dropout 1.0: must be in [0, 1)"),
    (["--lora-targets", "q_proj,(v"], "--lora-targets: '(v' is not a regular expression (missing ), unterminated subpattern at position 0)"),
    (["--ref-cache", "/tmp"], "--ref-cache /tmp: is a folder; give a file, e.g. /tmp/ref.safetensors"),
    (["--eval-every", "5"], "--eval-every 5: evaluates on --eval-data, which is not given"),
])
def test_every_option_range_is_checked_where_it_is_parsed(args, message):
    with pytest.raises(Exception) as e:
        parse_args(args)
    assert str(e.value) == message


def test_max_steps_that_cut_a_curriculum_short_say_so(easy_data, tmp_path, capsys):
    run_ok("--data", easy_data, "--out", tmp_path, "--curriculum", "easy-to-hard", "--epochs", 1, "--max-steps", 1, *FAST)
    assert "--max-steps 1 ends in curriculum stage 1 of 3: the later stages never train" in capsys.readouterr().out


def test_prefix_sharing_trains_as_the_unshared_path(easy_data, tmp_path):
    """SymMPO's five views on two images, LoRA with the adapters-off reference: three steps with
    each prefix run once give the figures of three steps with every view a full sequence."""
    args = ["--objective", "symmpo", "--data", easy_data, "--max-steps", 3, "--batch-size", 4, "--save-every", 0,
            "--lora-rank", 8, "--lora-dropout", 0]
    run_ok(*args, "--out", tmp_path / "shared")
    run_ok(*args, "--out", tmp_path / "unshared", "--no-prefix-sharing")
    shared, unshared = metrics(tmp_path / "shared"), metrics(tmp_path / "unshared")
    assert len(shared) == len(unshared) == 3
    for a, b in zip(shared, unshared):
        for k in ("loss", "rewards/chosen", "rewards/contrast_on_corrupt", "logps/chosen", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["step"], k)


def test_resume_takes_the_newest_intact_checkpoint_and_never_step_0(easy_data, tmp_path):
    """A missing or damaged newest checkpoint: --resume says so and continues from the one before
    (its metrics kept up to there, never restarted from step 1); none intact: one line, exit 2."""
    out = tmp_path / "run"
    run_ok("--data", easy_data, "--out", out, "--max-steps", 8, "--epochs", 2, *FAST[:2], "--save-every", 2, *FAST[4:])
    assert sorted(os.listdir(out / "checkpoint-8")) == ["adapter_config.json", "adapter_model.safetensors", "dcp",
                                                        "manifest.json", "rng-0.safetensors", "trainer_state.json"]
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-6", "checkpoint-8"]
    shutil.rmtree(out / "checkpoint-8")
    r = cli("--resume", out, "--max-steps", 10)
    assert r.returncode == 0, r.stderr
    assert f"passed over checkpoint-8 (named by {out / 'latest'}): missing" in r.stdout
    assert f"resumed from {out / 'checkpoint-6'} at step 6" in r.stdout
    assert [row["step"] for row in metrics(out)] == list(range(1, 11))
    os.remove(out / "latest")  # gone: the checkpoints themselves still say where the run is
    assert checkpoint.newest_intact(str(out))[0] == str(out / "checkpoint-10")
    os.remove(out / "checkpoint-10" / "dcp" / ".metadata")  # damaged since it was written
    (out / "checkpoint-8" / "trainer_state.json").write_text("{}")  # cut short: not the size its manifest says
    assert checkpoint.newest_intact(str(out))[0] is None
    r = cli("--resume", out, "--max-steps", 12)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"error: --resume {out}: no intact checkpoint to resume from (checkpoint-10: {os.path.join('dcp', '.metadata')} "
        f"missing; checkpoint-8: trainer_state.json has 2 bytes, not "
        f"{json.load(open(out / 'checkpoint-8' / 'manifest.json'))['trainer_state.json']}); --overwrite starts the run afresh"]
    assert [row["step"] for row in metrics(out)] == list(range(1, 11))  # nothing was lost


def test_your_data_without_a_model_says_which_model_it_trains(easy_data, tmp_path, capsys):
    warning = "warning: --data without --model trains tiny-llava, a small random model built from config"
    run_ok("--data", easy_data, "--out", tmp_path / "a", "--max-steps", 1, *FAST)
    assert capsys.readouterr().out.count(warning) == 1
    run_ok("--data", easy_data, "--out", tmp_path / "b", "--max-steps", 1, "--model", "tiny-llava", *FAST)
    run_ok("--out", tmp_path / "c", "--max-steps", 1, *FAST)  # the built-in data: the tiny model is the point
    assert warning not in capsys.readouterr().out


def test_pairs_with_the_same_chosen_and_rejected_are_left_out_and_counted(easy_data, tmp_path, capsys):
    rows = [json.loads(ln) for ln in open(easy_data)]
    for r in rows[:8]:
        r["rejected"] = r["chosen"]
    for r in rows:
        r["image"] = os.path.join(os.path.dirname(easy_data), r["image"])
        r["contrast_image"] = os.path.join(os.path.dirname(easy_data), r["contrast_image"])
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    run_ok("--data", data, "--out", tmp_path / "run", "--epochs", 1, *FAST)
    out = capsys.readouterr().out
    assert out.count("left out 8 of 32 examples whose chosen and rejected are the same text") == 1
    assert f"(first: {data}:1, id e0)" in out
    assert len(metrics(tmp_path / "run")) == 24 // 4  # one epoch of the 24 real pairs, batch 4
    for r in rows:
        r["rejected"] = r["chosen"]
    r = cli("--data", write_jsonl(tmp_path / "all.jsonl", rows), "--out", tmp_path / "none", "--model", "tiny-llava")
    assert r.returncode == 2 and r.stderr.strip() == (f"error: {tmp_path / 'all.jsonl'}: in all 32 examples chosen and "
                                                      f"rejected are the same text: no preference to learn")


def test_a_run_that_fails_before_training_takes_back_what_it_wrote(easy_data, tmp_path):
    """A model that will not load: the folders the run created are gone; in a folder that existed,
    only what the run wrote goes (base_model/), the user's own files stay."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llava"}))  # no weights, no processor
    r = cli("--data", easy_data, "--model", broken, "--out", tmp_path / "new" / "run")
    assert r.returncode == 2 and r.stderr.startswith(f"error: --model {broken}: cannot load")
    assert not os.path.exists(tmp_path / "new")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = cli("--data", easy_data, "--data", "x.jsonl", "--out", mine)  # fails after --out is claimed: no x.jsonl
    assert r.returncode == 2
    r = cli("--out", mine, "--max-steps", 1, "--eval-data", tmp_path / "missing.jsonl")
    assert r.returncode == 2 and sorted(os.listdir(mine)) == ["notes.txt"]  # synthetic/ written, then taken back


@pytest.mark.sends_signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_resume_is_exact(easy_data, tmp_path, monkeypatch,
                                                                                 capsys, signum):
    args = ["--data", easy_data, "--max-steps", "6", "--batch-size", "4", "--lora-rank", "8", "--lora-dropout", "0.1",
            "--save-every", "0"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_ok(*args, "--out", straight)
    real, calls, handler = train.train_step, [], signal.getsignal(signal.SIGINT)

    def signalled_during_step_3(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)  # as the cluster or Ctrl-C would, mid-run
        return out
    monkeypatch.setattr(train, "train_step", signalled_during_step_3)
    assert train.run([*args, "--out", str(stopped)]) == 128 + signum
    assert f"stopped at step 3 ({signal.Signals(signum).name}); continue with: python train.py --resume {stopped}" \
        in capsys.readouterr().out
    assert checkpoint.newest_intact(str(stopped))[0].endswith("checkpoint-3") and not os.path.exists(stopped / "final")
    assert signal.getsignal(signal.SIGINT) is handler  # the handlers are put back
    monkeypatch.setattr(train, "train_step", real)
    run_ok("--resume", stopped)
    assert "done: step 6, resumed at step 3: 3 steps, 12 samples in " in capsys.readouterr().out  # this process's
    assert_identical_runs(straight, stopped, 6)


@pytest.mark.sends_signals
def test_a_second_signal_stops_at_once_in_one_line(easy_data, tmp_path, monkeypatch, capsys):
    real = train.train_step

    def two_signals(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(train, "train_step", two_signals)
    assert train.run(["--data", easy_data, "--out", str(tmp_path), "--max-steps", "3", *FAST]) == 130
    err = capsys.readouterr().err
    assert "interrupted\n" in err and "Traceback" not in err


def test_one_run_per_folder(easy_data, tmp_path):
    """A folder held by a live run refuses a second one in one line; a dead holder's lock (a pid that
    is gone, or another host's lock not refreshed for 5 minutes) is taken over; a run lets go at its end."""
    import socket
    import time

    from mmpo.common import lock as files
    out = tmp_path / "run"
    args = ["--data", easy_data, "--out", out, "--max-steps", 30, "--epochs", 8, *FAST]
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 240
        while not (out / files.LOCK).exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        second = cli(*args[:-len(FAST)], "--overwrite", *FAST)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip() == (f"error: {out} is in use by train.py (pid {first.pid} on {socket.gethostname()}): "
                                         "one run per folder; wait for it, or choose another folder")
        assert first.wait(timeout=600) == 0, first.stderr[-2000:] if first.stderr else ""
    finally:
        first.kill()
    assert not (out / files.LOCK).exists() and len(metrics(out)) == 30  # the first run, whole; the lock let go
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for who, age in (({"host": socket.gethostname(), "pid": int(dead.stdout)}, 0), ({"host": "elsewhere", "pid": 1}, 600)):
        (tmp_path / "taken").mkdir(exist_ok=True)
        (tmp_path / "taken" / files.LOCK).write_text(json.dumps({"program": "train.py", **who}))
        os.utime(tmp_path / "taken" / files.LOCK, (time.time() - age, time.time() - age))
        run_ok("--data", easy_data, "--out", tmp_path / "taken", "--max-steps", 1, "--overwrite", *FAST)
    (tmp_path / "taken" / files.LOCK).write_text(json.dumps({"program": "eval.py", "host": "elsewhere", "pid": 1}))
    r = cli("--data", easy_data, "--out", tmp_path / "taken", "--max-steps", 1, "--overwrite", *FAST)
    assert r.returncode == 2 and "is in use by eval.py (pid 1 on elsewhere)" in r.stderr  # refreshed: alive


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_partial_checkpoint(easy_data, tmp_path, monkeypatch, capsys):
    """ENOSPC from a writer: one line naming the checkpoint and the errno, exit 2, the temporary
    folder removed; the checkpoint before it stays."""
    real = checkpoint.save_file

    def full_at_step_2(tensors, path, *a, **k):
        if ".checkpoint-2.tmp" in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(tensors, path, *a, **k)
    monkeypatch.setattr(checkpoint, "save_file", full_at_step_2)
    out = tmp_path / "o"
    assert train.run([*FAST, "--data", easy_data, "--out", str(out), "--max-steps", "3", "--save-every", "1"]) == 2
    err = capsys.readouterr().err  # the progress bar, then one line
    assert err.endswith(f"\nerror: cannot save {out}/checkpoint-2: No space left on device (ENOSPC); "
                        f"what was written of it is removed\n") and "Traceback" not in err
    assert sorted(n for n in os.listdir(out) if "checkpoint" in n) == ["checkpoint-1"]


def test_a_file_size_limit_hit_inside_pytorchs_writer_is_one_line(tmp_path):
    """A real limit (RLIMIT_FSIZE, as a full disk would): torch.save inside DCP fails with
    "unexpected pos" and no errno; the probe of the folder finds why. Nothing half-written stays."""
    import resource
    model = tmp_path / "model"  # saved first: a tiny model's own copy is larger than the limit
    m, processor = tiny_model("tiny-llava")
    m.save_pretrained(model)
    processor.save_pretrained(model)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (512 << 10, 512 << 10))
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *FAST, "--model", str(model), "--out", str(out),
                        "--max-steps", "2", "--save-every", "1", "--lora-rank", "1"],
                       preexec_fn=limit, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"error: cannot save {out}/checkpoint-1: File too large (EFBIG); what was written of it is removed"), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert not [n for n in os.listdir(out) if "checkpoint" in n]
