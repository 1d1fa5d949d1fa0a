"""eval.py: image reliance on a model that ignores the image; --data scored as training scores
it; checkpoints side by side, each on its own base model, giving exactly what it gives alone; the
table's directions and counts; benchmark options and answer lengths; QA's figures (the metrics
themselves: test_metrics.py; every mistake on the command line: test_eval_errors.py)."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import eval as evaluate
import train
from conftest import ROOT, write_jsonl
from mmpo.cli import UserError
from mmpo.training.config import Config
from mmpo.evaluation.metrics import read_option
from mmpo.logps import sequence_logps
from mmpo.tiny import tiny_model


def test_a_model_that_ignores_the_image_shows_no_reliance(synthetic):
    model, proc = tiny_model("tiny-llava")
    model.eval()
    args = SimpleNamespace(seed=0, max_length=1024, batch_size=4, logps_chunk=256, prefix_sharing=True)
    seeing = evaluate.reliance(model, synthetic, proc, args)
    assert seeing["reliance/crop/logp_gap"] != 0.0  # a random model still reacts to its image

    real = model.get_image_features

    def blind_features(*a, **k):
        out = real(*a, **k)
        out.pooler_output = [torch.zeros_like(f) for f in out.pooler_output]
        return out
    model.get_image_features = blind_features
    blind = evaluate.reliance(model, synthetic, proc, args)
    for kind in ("crop", "noise", "blank"):
        assert blind[f"reliance/{kind}/logp_gap"] == 0.0
        assert blind[f"reliance/{kind}/cond_acc"] == 0.0
    assert blind["reliance/blind_acc"] == blind["reliance/sighted_acc"]
    assert blind["reliance/sighted_minus_blind"] == 0.0


# ---- checkpoints on different base models --------------------------------------------------

@pytest.fixture(scope="module")
def runs(easy_data, tmp_path_factory):
    """Three short train.py runs: mDPO with LoRA and DPO fully fine-tuned, both on tiny LLaVA,
    and DPO with LoRA on tiny Qwen2-VL, a model of another family and vocabulary."""
    out = tmp_path_factory.mktemp("runs")
    common = ["--data", easy_data, "--max-steps", "3", "--batch-size", "4", "--lora-rank", "8", "--save-every", "0"]
    for name, extra in [("mdpo", ["--objective", "mdpo"]), ("dpo", ["--objective", "dpo", "--lora-rank", "0"]),
                        ("qwen", ["--objective", "dpo", "--model", "tiny-qwen2vl"])]:
        assert train.run([*common, *extra, "--out", str(out / name)]) == 0
    return {name: str(out / name) for name in ("mdpo", "dpo", "qwen")}


@pytest.fixture(scope="module")
def inputs(easy_data, tmp_path_factory):
    """Held-out preference data, a CHAIR, a POPE and a QA file: 4 examples each, the easy data's
    images (blue) and, for QA, two of its contrast images (red)."""
    d = tmp_path_factory.mktemp("inputs")
    rows = [json.loads(line) for line in open(easy_data)][:4]
    base = os.path.dirname(easy_data)
    held = [{**r, "image": os.path.join(base, r["image"]), "contrast_image": os.path.join(base, r["contrast_image"])}
            for r in rows]
    chair = [{"id": f"c-{r['id']}", "image": os.path.join(base, r["image"]), "prompt": "Describe it.",
              "objects": ["dog"]} for r in rows]
    pope = [{"id": f"p-{r['id']}", "image": os.path.join(base, r["image"]), "question": "Is there a dog?",
             "answer": "no"} for r in rows]
    # the tiny checkpoints babble runs of "u" whatever the image, a prior in the very sense of the
    # benchmark: with it among the options, some of their answers are read
    qa = [{"id": f"q-{r['id']}", "image": os.path.join(base, r["image"] if i < 2 else r["contrast_image"]),
           "question": "What color is it?", "answer": "blue" if i < 2 else "red", **extra}
          for i, (r, extra) in enumerate(zip(rows, [
              {"options": ["blue", "red", "uuuu"], "group": "blue", "prior": "uuuu"},
              {"options": ["blue", "red", "uuuu"], "group": "blue"},
              {"options": ["red", "blue", "uuuu", "uu"], "group": "red", "prior": "uuuu"},
              {"prior": "uu"}]))]  # no options: read as its answer or its prior
    return ["--data", write_jsonl(d / "held.jsonl", held), "--bench", "chair", write_jsonl(d / "chair.jsonl", chair),
            "--bench", "pope", write_jsonl(d / "pope.jsonl", pope), "--bench", "qa", write_jsonl(d / "qa.jsonl", qa),
            "--max-new-tokens", "4", "--batch-size", "4"]


def evaluated(out, *argv) -> dict:
    """eval.py's report (eval.json) after a successful run writing to ``out``."""
    assert evaluate.run([*map(str, argv), "--out", str(out)]) == 0
    assert not os.path.exists(os.path.join(out, ".mmpo.lock"))  # the folder's lock, let go at the end
    return json.load(open(os.path.join(out, "eval.json")))


@pytest.fixture(scope="module")
def together(runs, inputs, tmp_path_factory):
    """The three runs evaluated in one table: (its folder, eval.json)."""
    out = tmp_path_factory.mktemp("together")
    return out, evaluated(out, "--checkpoint", runs["mdpo"], runs["dpo"], runs["qwen"], *inputs)


def test_checkpoints_side_by_side_each_on_its_own_base(runs, together):
    out, report = together
    # one base column per base model, named by it, then the checkpoints in the order given
    assert report["columns"] == ["base-tiny-llava", "base-tiny-qwen2vl", "mdpo", "dpo", "qwen"]
    # the LoRA runs' adapter_config.json and the full run's config.json name the base each started from
    assert report["bases"] == {"base-tiny-llava": os.path.join(runs["mdpo"], "base_model"),
                               "base-tiny-qwen2vl": os.path.join(runs["qwen"], "base_model"),
                               "mdpo": os.path.join(runs["mdpo"], "base_model"),
                               "dpo": os.path.join(runs["dpo"], "base_model"),
                               "qwen": os.path.join(runs["qwen"], "base_model")}
    for col in report["columns"]:
        m = report["metrics"][col]
        for key in ("pref/rejected/reward_acc", "pref/lang_biased/logp_acc", "pref/contrast_on_image/reward_margin",
                    "reliance/noise/cond_acc", "reliance/blind_acc", "chair/chair_i", "pope/f1", "qa/accuracy",
                    "qa/prior_rate", "qa/red/accuracy"):
            assert key in m
        assert m["data/examples"] == m["chair/examples"] == m["pope/examples"] == m["qa/examples"] == 4
        # the mean answer length is that of the saved answers: in words, and in the tokens generated
        for kind in ("chair", "pope", "qa"):
            saved = [json.loads(line) for line in open(out / f"answers-{col}-{kind}.jsonl")]
            assert [s["id"] for s in saved] == [f"{kind[0]}-e{i}" for i in range(4)]  # the data's own ids, in order
            answers = [s["answer"] for s in saved]
            assert m[f"{kind}/mean_answer_words"] == pytest.approx(sum(len(a.split()) for a in answers) / 4)
            assert m[f"{kind}/mean_answer_tokens"] == pytest.approx(sum(s["tokens"] for s in saved) / 4)
            assert all(s["truncated"] == (s["tokens"] == 4) and 0 < s["tokens"] <= 4 for s in saved)  # --max-new-tokens 4
            assert m[f"{kind}/truncated"] == sum(s["truncated"] for s in saved)
        # each example's log-probs: the --data figures computed again from them
        lp = [json.loads(line) for line in open(out / f"logps-{col}.jsonl")]
        assert len(lp) == 4 and all(isinstance(r["id"], str) for r in lp)
        assert m["pref/rejected/logp_acc"] == sum(r["chosen"] > r["rejected"] for r in lp) / 4
        assert m["reliance/noise/cond_acc"] == sum(r["noise/chosen"] > r["noise/chosen_on_corrupt"] for r in lp) / 4
        assert m["reliance/blind_acc"] == sum(r["blank/chosen_on_corrupt"] > r["blank/rejected_on_corrupt"] for r in lp) / 4
    # a base model is its own reference: no margin; each trained one moved away from its own base
    for base in ("base-tiny-llava", "base-tiny-qwen2vl"):
        assert report["metrics"][base]["pref/rejected/reward_margin"] == 0.0
    for col in ("mdpo", "dpo", "qwen"):
        assert report["metrics"][col]["pref/rejected/reward_acc"] == 1.0
        assert report["metrics"][col]["pref/rejected/reward_margin"] > 0.5


def test_each_checkpoint_gives_alone_exactly_what_it_gives_beside_the_others(runs, inputs, together, tmp_path):
    """Before the fix every column sat on the first checkpoint's base: Qwen's adapters went onto
    tiny LLaVA and were scored against it, far from what they give alone. (mdpo, the first, always
    had its own base; dpo's is named by its run's config.json, qwen's by its adapters.)"""
    out, report = together
    for name, base in [("dpo", "base-tiny-llava"), ("qwen", "base-tiny-qwen2vl")]:
        alone = evaluated(tmp_path / name, "--checkpoint", runs[name], *inputs)
        assert alone["columns"] == ["base", name]
        assert alone["metrics"][name] == report["metrics"][name]  # every number, exactly
        assert alone["metrics"]["base"] == report["metrics"][base]
        for kind in ("chair", "pope", "qa"):
            assert open(tmp_path / name / f"answers-{name}-{kind}.jsonl").read() == \
                open(out / f"answers-{name}-{kind}.jsonl").read()


def test_qa_figures_are_those_of_the_saved_answers(inputs, together):
    """Every column's QA figures, recomputed by hand from its saved answers and the data: what
    was read from each answer and whether it is right, then the rates overall, per group, and
    over the rows whose prior is not their answer."""
    out, report = together
    data = {r["id"]: r for r in map(json.loads, open(inputs[inputs.index("qa") + 1]))}
    for col in report["columns"]:
        m = report["metrics"][col]
        saved = {s["id"]: s for s in map(json.loads, open(out / f"answers-{col}-qa.jsonl"))}
        assert list(saved) == ["q-e0", "q-e1", "q-e2", "q-e3"]
        for i, s in saved.items():
            row = data[i]
            choices = row["options"] if "options" in row else [row["answer"], row["prior"]]
            assert s["read"] == read_option(s["answer"], choices)
            assert s["correct"] == (s["read"] == row["answer"])

        def rate(ids, what):
            return sum(bool(what(saved[i])) for i in ids) / len(ids)
        def right(s): return s["correct"]
        def unread(s): return s["read"] is None
        def prior(s): return s["read"] == data[s["id"]]["prior"]
        every = list(saved)
        assert (m["qa/examples"], m["qa/accuracy"], m["qa/unread"]) == (4, rate(every, right), rate(every, unread))
        # the prior differs from the answer on q-e0 (uuuu, blue), q-e2 (uuuu, red) and q-e3 (uu, red)
        assert (m["qa/prior_examples"], m["qa/prior_rate"]) == (3, rate(["q-e0", "q-e2", "q-e3"], prior))
        assert (m["qa/blue/examples"], m["qa/blue/accuracy"]) == (2, rate(["q-e0", "q-e1"], right))
        assert (m["qa/blue/prior_examples"], m["qa/blue/prior_rate"]) == (1, rate(["q-e0"], prior))
        assert (m["qa/red/examples"], m["qa/red/accuracy"]) == (1, rate(["q-e2"], right))
        assert (m["qa/red/prior_examples"], m["qa/red/prior_rate"]) == (1, rate(["q-e2"], prior))


def test_data_figures_do_not_depend_on_how_the_log_probs_are_computed(runs, synthetic, tmp_path, monkeypatch):
    """--logps-chunk and --prefix-sharing, train.py's options, reach every scoring of --data (the
    checkpoint's, its reliance, its base's as the reference) and change none of its figures. On
    the synthetic squares, whose crops differ from the image (a crop of the easy data's plain
    images is the same image: a gap of rounding noise, whose sign an accuracy would count)."""
    seen = set()

    def recorded(model, batch, *a, share_prefix, chunk, **k):
        seen.add((share_prefix, chunk))
        return sequence_logps(model, batch, *a, share_prefix=share_prefix, chunk=chunk, **k)
    monkeypatch.setattr(evaluate, "sequence_logps", recorded)
    rows = [json.loads(line) for line in open(synthetic)][:3]
    data = write_jsonl(tmp_path / "three.jsonl", [{**r, "image": os.path.join(os.path.dirname(synthetic), r["image"]),
                                                   "contrast_image": os.path.join(os.path.dirname(synthetic),
                                                                                  r["contrast_image"])} for r in rows])
    figures = {}
    for chunk in (7, 0):
        for sharing in ("--prefix-sharing", "--no-prefix-sharing"):
            seen.clear()
            m = evaluated(tmp_path / f"{chunk}{sharing}", "--checkpoint", runs["mdpo"], "--no-base", "--data", data,
                          "--logps-chunk", chunk, sharing, "--batch-size", 2)["metrics"]["mdpo"]
            assert seen == {(sharing == "--prefix-sharing", chunk)}
            figures[chunk, sharing] = {k: v for k, v in m.items() if k.startswith(("pref/", "reliance/"))}
    first = figures[7, "--prefix-sharing"]
    assert "pref/rejected/reward_margin" in first and "reliance/blank/logp_gap" in first
    assert first["pref/rejected/reward_margin"] != 0  # a real comparison: the checkpoint moved away from its base
    # each figure is a mean of differences of summed fp32 log-probs near -120 (22 tokens at ~-5.5):
    # another summation order moves such a sum by ~1e-5 (the blank gap here: 1.0e-5, with fused AdamW's
    # checkpoint), within the tolerance test_logps.py gives the sums themselves (rtol 1e-5)
    for other in figures.values():
        assert other.keys() == first.keys()
        assert other == {k: pytest.approx(v, abs=1e-4) for k, v in first.items()}


def test_model_names_the_base_and_must_be_each_checkpoints(runs, inputs, together, tmp_path):
    # tiny-llava built from config (seed 0) is the base train.py saved for these runs
    report = evaluated(tmp_path, "--model", "tiny-llava", "--checkpoint", runs["mdpo"], *inputs[:2], *inputs[-2:])
    assert report["columns"] == ["base", "mdpo"]
    both = together[1]["metrics"]
    for col, same in [("base", "base-tiny-llava"), ("mdpo", "mdpo")]:
        m = report["metrics"][col]
        assert m == {k: v for k, v in both[same].items() if k.startswith(("data/", "pref/", "reliance/"))}
    # a --model that contradicts a checkpoint's record is refused, never silently used
    r = subprocess.run([sys.executable, "eval.py", "--model", "tiny-llava", "--checkpoint", runs["qwen"],
                        *inputs[:2]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"error: --checkpoint {runs['qwen']} was trained on tiny-qwen2vl "
                        f"({runs['qwen']}/base_model), not on --model tiny-llava: leave --model out to evaluate each "
                        f"checkpoint on its own base\n")


def test_adapters_that_do_not_fit_their_base_are_refused(runs, inputs, tmp_path, capsys):
    """An adapter_config.json edited by hand, or adapters from elsewhere: an error, never the base
    model evaluated under the checkpoint's name (load_adapter passes over weights with no layer)."""
    def adapters(name, edit):
        folder = tmp_path / name
        folder.mkdir()
        weights = load_file(os.path.join(runs["mdpo"], "final", "adapter_model.safetensors"))
        cfg = json.load(open(os.path.join(runs["mdpo"], "final", "adapter_config.json")))
        edit(weights, cfg)
        save_file(weights, folder / "adapter_model.safetensors")
        json.dump(cfg, open(folder / "adapter_config.json", "w"))
        return folder

    def error(folder) -> str:
        assert evaluate.run(["--checkpoint", str(folder), *inputs[:2], "--no-base", "--out", str(tmp_path / "o")]) == 2
        return capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    # another family, whose layers have other names
    other = adapters("other-base", lambda w, cfg: cfg.update(base_model_name_or_path="tiny-idefics3"))
    assert error(other).startswith(f"error: --checkpoint {other}: its adapters do not fit tiny-idefics3 (no Linear "
                                   f"module matches the LoRA targets")
    # one weight too many: a layer the base does not have
    extra = "base_model.model.model.language_model.layers.9.self_attn.q_proj.lora_A.weight"
    more = adapters("extra-layer", lambda w, cfg: w.update({extra: torch.zeros(8, 256)}))
    assert error(more) == (f"error: --checkpoint {more}: 1 of its {4 * 7 * 2 + 1} adapter weights have no place in "
                           f"tiny-llava ({runs['mdpo']}/base_model) (e.g. {extra.removeprefix('base_model.model.')})")


def test_the_table_says_which_way_is_better_and_on_how_many_examples(together):
    out, report = together
    table = open(out / "eval.md").read().splitlines()
    assert table[0] == "| metric | base-tiny-llava | base-tiny-qwen2vl | mdpo | dpo | qwen |"
    assert table[2] == "| base model | tiny-llava | tiny-qwen2vl | tiny-llava | tiny-llava | tiny-qwen2vl |"
    rows = {line.split(" | ")[0][2:]: line for line in table[3:] if line.startswith("| ")}
    assert rows["data/examples"] == "| data/examples | 4 | 4 | 4 | 4 | 4 |"
    assert "Implicit rewards (`reward_acc`, `reward_margin`) are against each column's base model." in table[-1]
    for name in ("pref/rejected/reward_acc ↑", "reliance/crop/cond_acc ↑", "reliance/sighted_minus_blind ↑",
                 "chair/chair_s ↓", "chair/chair_i ↓", "chair/coverage ↑", "pope/f1 ↑", "pope/unparsed ↓",
                 # neither: counts, lengths, the yes-ratio, the blind accuracy (read against the sighted one)
                 "chair/examples", "chair/mentions", "pope/yes_ratio", "pope/mean_answer_words", "reliance/blind_acc"):
        assert name in rows
    # each group starts with its count
    keys = [k.rstrip(" ↑↓") for k in rows]
    assert keys.index("data/examples") < keys.index("pref/rejected/logp_acc")
    assert keys.index("chair/examples") == keys.index("chair/chair_s") - 1
    assert table[-1].startswith("↑ higher is better, ↓ lower is better, no arrow: neither.")


def test_answers_cut_at_max_length_are_counted(tmp_path, image_dir):
    """A --max-length that leaves room for part of an answer: the log-probs then compare
    prefixes, and the table says on how many examples."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"image": f"img/{i}.png", "prompt": "Q?", "chosen": "A dog.",
                                                "rejected": "A cat."} for i in range(3)])

    def cut(max_length: int) -> int:
        report = evaluated(tmp_path / str(max_length), "--model", "tiny-llava", "--data", data, "--max-length", max_length)
        return report["metrics"]["base"]["data/truncated"]
    # tiny LLaVA: "Q?" with its image takes 36 tokens, each answer 6 (one per byte) + end-of-sequence
    assert cut(43) == 0  # room for 7: every answer whole
    assert cut(42) == 3  # room for 6: every answer loses its end


# ---- benchmarks ------------------------------------------------------------------------------

def test_bad_benchmark_rows_are_one_line_errors(tmp_path, image_dir, capsys):
    chair_path = write_jsonl(tmp_path / "c.jsonl", [
        {"image": "img/0.png", "prompt": "Describe.", "objects": ["dog", "unicorn"]},
        {"image": "img/0.png", "prompt": "Describe.", "objects": "dog"},
        {"image": "img/9.png", "prompt": "Describe.", "objects": []},
    ])
    assert evaluate.run(["--model", "tiny-llava", "--bench", "chair", chair_path, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"error: {chair_path}:3: field 'image': image file not found")
    pope_path = write_jsonl(tmp_path / "p.jsonl", [
        {"image": "img/0.png", "question": "Dog?", "answer": "maybe"},
        {"image": "img/0.png", "answer": "yes"},
    ])
    chair_ok = write_jsonl(tmp_path / "c2.jsonl", [{"image": "img/0.png", "prompt": "D.", "objects": ["dog", "unicorn"]},
                                                    {"image": "img/0.png", "prompt": "D.", "objects": "dog"},
                                                    {"image": "img/0.png", "prompt": "D.", "objects": ["bus"],
                                                     "captions": "A bus."}])
    assert evaluate.run(["--model", "tiny-llava", "--bench", "chair", chair_ok, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {chair_ok}:1: field 'objects': 'unicorn' is not one of the 80 COCO objects or their synonyms",
        f"error: {chair_ok}:2: field 'objects': must be a list of object names",
        f"error: {chair_ok}:3: field 'captions': must be a list of captions"]
    assert evaluate.run(["--model", "tiny-llava", "--bench", "pope", pope_path, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {pope_path}:1: field 'answer': must be \"yes\" or \"no\"",
        f"error: {pope_path}:2: field 'question': missing"]
    assert evaluate.run(["--model", "tiny-llava", "--bench", "vqa", pope_path]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_generation_options_and_their_defaults():
    args = evaluate.build_parser().parse_args([])
    assert args.max_new_tokens is None  # parse_args makes it 1024 (published CHAIR evaluations), 32 for tiny models
    assert args.num_beams == 1  # greedy; SymMPO's Object HalBench used 3
    assert args.pope_parse == "standard"
    # --data is scored as train.py scores it, by default too
    assert (args.logps_chunk, args.prefix_sharing) == (Config.logps_chunk, Config.prefix_sharing)
    with pytest.raises(UserError, match="invalid choice: 'loose'"):
        evaluate.build_parser().parse_args(["--pope-parse", "loose"])


def test_benchmarks_read_hand_made_answers(tmp_path, image_dir, monkeypatch):
    """The benchmarks on answers we wrote ourselves (the model's generation replaced), with each
    figure worked by hand."""
    canned = {"Describe.": ["A dog and a dog.", "A cat on a sofa."],
              "Is there a dog?": ["There is not a dog. A cat.", "There is a cat on the bed."]}
    asked = []

    def fake_generate(model, processor, prompts, images, *, max_new_tokens, num_beams, **kwargs):
        asked.append((max_new_tokens, num_beams))
        # generated token counts: the second description hit the limit
        return canned[prompts[0]], [3, max_new_tokens if prompts[0] == "Describe." else 5]
    monkeypatch.setattr(evaluate, "generate", fake_generate)
    chair_path = write_jsonl(tmp_path / "c.jsonl", [
        {"image": "img/0.png", "prompt": "Describe.", "objects": ["dog"]},
        # the reference captions' objects are true objects too: the sofa (a couch) is not hallucinated
        {"image": "img/1.png", "prompt": "Describe.", "objects": ["cats"], "captions": ["A cat on a couch."]}])
    pope_path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "coco-42", "image": "img/0.png", "question": "Is there a dog?", "answer": "no"},
        {"id": 7, "image": "img/1.png", "question": "Is there a dog?", "answer": "yes"}])
    for parse in ("standard", "strict"):
        out = tmp_path / parse
        assert evaluate.run(["--model", "tiny-llava", "--bench", "chair", chair_path, "--bench", "pope", pope_path,
                             "--out", str(out), "--pope-parse", parse]) == 0
        m = json.load(open(out / "eval.json"))["metrics"]["base"]
        # CHAIR: dog, dog (true) | cat, couch (true, the couch from the caption): 4 mentions, none hallucinated
        assert (m["chair/chair_s"], m["chair/chair_i"], m["chair/coverage"], m["chair/mentions"]) == (0, 0, 1, 4)
        assert (m["chair/examples"], m["chair/truncated"], m["pope/truncated"]) == (2, 1, 0)
        # "A dog and a dog." 5 words, "A cat on a sofa." 5 words; 3 and 32 generated tokens (not the text's 16)
        assert m["chair/mean_answer_words"] == 5 and m["chair/mean_answer_tokens"] == (3 + 32) / 2
        # 7 and 7 words; 3 and 5 tokens
        assert m["pope/mean_answer_words"] == 7 and m["pope/mean_answer_tokens"] == 4
        saved = [json.loads(line) for line in open(out / "answers-base-pope.jsonl")]
        assert [s["id"] for s in saved] == ["coco-42", "7"]  # the data's ids (a number as its string)
        if parse == "standard":
            # "not" in the first sentence -> no (right); no "no" at all -> yes (right)
            assert [s["parsed"] for s in saved] == ["no", "yes"]
            assert (m["pope/accuracy"], m["pope/precision"], m["pope/recall"], m["pope/f1"]) == (1, 1, 1, 1)
            assert (m["pope/yes_ratio"], m["pope/unparsed"]) == (0.5, 0)
        else:
            # neither starts with yes or no: both unparsed, both wrong
            assert [s["parsed"] for s in saved] == [None, None]
            assert (m["pope/accuracy"], m["pope/precision"], m["pope/recall"], m["pope/f1"]) == (0, 0, 0, 0)
            assert (m["pope/yes_ratio"], m["pope/unparsed"]) == (0, 2)
    assert asked == [(32, 1)] * 4  # the defaults reach the generation: a tiny model's 32 new tokens, greedy
    saved = [json.loads(line) for line in open(tmp_path / "strict" / "answers-base-chair.jsonl")]
    # no id in the data: the line number, as training names the row
    assert saved[1] == {"id": "2", "answer": "A cat on a sofa.", "tokens": 32, "truncated": True, "objects": ["cat", "couch"],
                        "hallucinated": []}

    # POPE's splits side by side, each named by its file; a shorter generation with beams on request
    split = write_jsonl(tmp_path / "adversarial.jsonl", [json.loads(line) for line in open(pope_path)])
    assert evaluate.run(["--model", "tiny-llava", "--bench", "pope", pope_path, "--bench", "pope", split,
                         "--out", str(tmp_path / "splits"), "--max-new-tokens", "7", "--num-beams", "3"]) == 0
    m = json.load(open(tmp_path / "splits" / "eval.json"))["metrics"]["base"]
    assert m["pope-p/accuracy"] == 1 and m["pope-adversarial/accuracy"] == 1 and "pope/accuracy" not in m
    assert os.path.isfile(tmp_path / "splits" / "answers-base-pope-adversarial.jsonl")
    assert asked[4:] == [(7, 3), (7, 3)]


def test_qa_reads_hand_made_answers(tmp_path, image_dir, monkeypatch):
    """QA on answers we wrote ourselves (the model's generation replaced), every figure worked by
    hand: overall, per group (sorted, after the whole bench's figures), and the prior rate over
    the rows whose prior is not their answer."""
    colors = ["red", "green", "blue", "yellow"]
    rows = [  # (row, the answer given)
        ({"group": "pro-prior", "answer": "red", "options": colors, "prior": "red"}, "The circle is red."),
        ({"group": "counter-prior", "answer": "blue", "options": colors, "prior": "red"},
         "The circle is red, not blue."),
        ({"group": "counter-prior", "answer": "green", "options": colors, "prior": "red"}, "It is GREEN."),
        ({"group": "counter-prior", "answer": "yellow", "options": colors, "prior": "red"}, "Reddish, I think."),
        ({"answer": "dark red", "prior": "red"}, "It is dark red."),  # no options: read as dark red or red
        ({"answer": "two"}, "There are 2."),  # no options, no prior: only "two" can be read
        ({"answer": "blue", "prior": "red"}, "It looks red to me."),  # no options: the prior is read all the same
    ]
    answers = {f"q{i}": a for i, (_, a) in enumerate(rows)}

    def fake_generate(model, processor, prompts, images, **kwargs):
        return list(answers.values()), [1024 if a == "There are 2." else len(a) for a in answers.values()]  # the last hit the limit
    monkeypatch.setattr(evaluate, "generate", fake_generate)
    path = write_jsonl(tmp_path / "qa.jsonl", [{"id": f"q{i}", "image": f"img/{i % 4}.png",
                                                "question": "What color is the circle?", **r}
                                               for i, (r, _) in enumerate(rows)])
    assert evaluate.run(["--model", "tiny-llava", "--bench", "qa", path, "--out", str(tmp_path / "o")]) == 0
    m = json.load(open(tmp_path / "o" / "eval.json"))["metrics"]["base"]
    saved = [json.loads(line) for line in open(tmp_path / "o" / "answers-base-qa.jsonl")]
    assert [(s["id"], s["answer"], s["read"], s["correct"]) for s in saved] == [
        ("q0", "The circle is red.", "red", True),
        ("q1", "The circle is red, not blue.", "red", False),  # the prior, named first
        ("q2", "It is GREEN.", "green", True),
        ("q3", "Reddish, I think.", None, False),  # no whole option
        ("q4", "It is dark red.", "dark red", True),
        ("q5", "There are 2.", None, False),
        ("q6", "It looks red to me.", "red", False)]
    # right: q0, q2, q4 of 7; unread: q3, q5; the prior differs from the answer on q1-q4 and q6, read on q1 and q6
    assert {k.removeprefix("qa/"): v for k, v in m.items()} == {
        "examples": 7, "accuracy": 3 / 7, "unread": 2 / 7, "prior_examples": 5, "prior_rate": 2 / 5,
        "truncated": 1, "mean_answer_words": (4 + 6 + 3 + 3 + 4 + 3 + 5) / 7,
        "mean_answer_tokens": (sum(map(len, answers.values())) - len("There are 2.") + 1024) / 7,  # as generated
        # q1-q3: right on q2, unread q3, the prior read on q1 | q0, whose prior is its answer: no prior rate
        "counter-prior/examples": 3, "counter-prior/accuracy": 1 / 3, "counter-prior/unread": 1 / 3,
        "counter-prior/prior_examples": 3, "counter-prior/prior_rate": 1 / 3,
        "pro-prior/examples": 1, "pro-prior/accuracy": 1.0, "pro-prior/unread": 0.0}
    assert list(m) == [f"qa/{k}" for k in ["examples", "accuracy", "unread", "prior_examples", "prior_rate",
                                           "truncated", "mean_answer_words", "mean_answer_tokens"]] + \
        [f"qa/{g}/{k}" for g, ks in [("counter-prior", 5), ("pro-prior", 3)]
         for k in ["examples", "accuracy", "unread", "prior_examples", "prior_rate"][:ks]]
    table = {line.split(" | ")[0][2:] for line in open(tmp_path / "o" / "eval.md")}
    for name in ("qa/accuracy ↑", "qa/unread ↓", "qa/prior_rate ↓", "qa/counter-prior/prior_rate ↓",
                 "qa/pro-prior/accuracy ↑", "qa/prior_examples", "qa/counter-prior/examples"):
        assert name in table

    # no row whose prior differs from its answer: no prior rate at all
    write_jsonl(tmp_path / "same.jsonl", [{"image": "img/0.png", "question": "Q?", "answer": "red", "prior": "red"}])
    answers = {"1": "Red."}
    assert evaluate.run(["--model", "tiny-llava", "--bench", "qa", str(tmp_path / "same.jsonl"),
                         "--out", str(tmp_path / "same")]) == 0
    m = json.load(open(tmp_path / "same" / "eval.json"))["metrics"]["base"]
    assert (m["qa/accuracy"], m["qa/unread"]) == (1.0, 0.0)
    assert not any("prior" in k for k in m)


# ---- the command line and the plots ----------------------------------------------------------

def test_help_answers_before_torch_is_imported():
    """--help shows the whole description and every default, without importing torch (seconds)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "eval.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "json" in imported and "torch" not in imported and "transformers" not in imported
    assert evaluate.__doc__.splitlines()[0] in r.stdout and "pope-adv." in r.stdout  # first and last lines
    for default in ("(default: 8)", "(default: 1024)", "(default: eval)", "(default: 0.1)", "(default: standard)"):
        assert default in " ".join(r.stdout.split())
    assert "3 beams without sampling and 1024 new tokens" in " ".join(r.stdout.split())
    assert "qa FILE (image, question, answer, optional options, group, prior" in " ".join(r.stdout.split())


def test_training_curves_leave_out_rows_without_the_figure(tmp_path):
    rows = [{"step": 1, "loss": 0.69, "rewards/accuracies": 0.0, "learning_rate": 1e-3},
            {"step": 2, "loss": 0.5, "rewards/accuracies": 0.5, "eval/loss": 0.6},
            {"step": 3, "eval/loss": 0.55, "epoch": 0, "stage": 0},  # held-out only: that step's training was skipped
            '{"step": 4, "loss": 0.4']  # a line a killed run left half-written
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    curves = evaluate.training_curves(str(tmp_path))
    assert curves["loss"] == ([1, 2], [0.69, 0.5])
    assert curves["rewards/accuracies"] == ([1, 2], [0.0, 0.5])
    assert curves["eval/loss"] == ([2, 3], [0.6, 0.55])
    assert evaluate.training_curves(None)["loss"] == ([], [])  # a base model has no run
