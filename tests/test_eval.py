"""eval.py: image reliance on a model that ignores the image, columns side by side, benchmark
options and answer lengths (CHAIR and POPE themselves: test_hallucination.py)."""
import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
import torch

import eval as evaluate
import train
from conftest import write_jsonl
from mmpo.models import tiny_model


def test_a_model_that_ignores_the_image_shows_no_reliance(synthetic):
    model, proc = tiny_model("tiny-llava")
    model.eval()
    args = SimpleNamespace(seed=0, max_length=1024, batch_size=4)
    seeing = evaluate.reliance_metrics(model, synthetic, proc, args)
    assert seeing["reliance/crop/logp_gap"] != 0.0  # a random model still reacts to its image

    real = model.get_image_features

    def blind_features(*a, **k):
        out = real(*a, **k)
        out.pooler_output = [torch.zeros_like(f) for f in out.pooler_output]
        return out
    model.get_image_features = blind_features
    blind = evaluate.reliance_metrics(model, synthetic, proc, args)
    for kind in ("crop", "noise", "blank"):
        assert blind[f"reliance/{kind}/logp_gap"] == 0.0
        assert blind[f"reliance/{kind}/cond_acc"] == 0.0
    assert blind["reliance/blind_acc"] == blind["reliance/sighted_acc"]
    assert blind["reliance/sighted_minus_blind"] == 0.0


def test_checkpoints_side_by_side(easy_data, tmp_path, capsys):
    common = ["--data", easy_data, "--max-steps", "3", "--batch-size", "4", "--lora-rank", "8", "--save-every", "0"]
    assert train.run([*common, "--objective", "mdpo", "--out", str(tmp_path / "mdpo")]) == 0
    assert train.run([*common, "--objective", "dpo", "--lora-rank", "0", "--out", str(tmp_path / "dpo")]) == 0  # a full model
    rows = [json.loads(line) for line in open(easy_data)][:6]
    base = os.path.dirname(easy_data)
    chair_rows = [{"image": os.path.join(base, r["image"]), "prompt": "Describe it.", "objects": ["dog"]} for r in rows]
    pope_rows = [{"image": os.path.join(base, r["image"]), "question": "Is there a dog?", "answer": "no"} for r in rows]
    held = write_jsonl(tmp_path / "held.jsonl", [{**r, "image": os.path.join(base, r["image"]),
                                                   "contrast_image": os.path.join(base, r["contrast_image"])} for r in rows])
    code = evaluate.run(["--checkpoint", str(tmp_path / "mdpo"), str(tmp_path / "dpo"), "--data", held,
                         "--bench", "chair", write_jsonl(tmp_path / "chair.jsonl", chair_rows),
                         "--bench", "pope", write_jsonl(tmp_path / "pope.jsonl", pope_rows),
                         "--out", str(tmp_path / "ev"), "--max-new-tokens", "4", "--batch-size", "3", "--plot"])
    assert code == 0
    report = json.load(open(tmp_path / "ev" / "eval.json"))
    assert report["columns"] == ["base", "mdpo", "dpo"]
    tok = tiny_model("tiny-llava")[1].tokenizer  # every column's processor is tiny-llava's
    for col in report["columns"]:
        m = report["metrics"][col]
        for key in ("pref/rejected/reward_acc", "pref/lang_biased/logp_acc", "pref/contrast_on_image/reward_margin",
                    "reliance/noise/cond_acc", "reliance/blind_acc", "chair/chair_i", "pope/f1"):
            assert key in m
        assert m["chair/answers"] == 6 and m["pope/answers"] == 6
        # the mean answer length is that of the saved answers, in words and in the model's tokens
        for kind in ("chair", "pope"):
            answers = [json.loads(line)["answer"] for line in open(tmp_path / "ev" / f"answers-{col}-{kind}.jsonl")]
            assert m[f"{kind}/mean_answer_words"] == pytest.approx(sum(len(a.split()) for a in answers) / 6)
            tokens = [len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers]
            assert m[f"{kind}/mean_answer_tokens"] == pytest.approx(sum(tokens) / 6)
    # the base model is its own reference: no margin; the trained ones moved away from it
    assert report["metrics"]["base"]["pref/rejected/reward_margin"] == 0.0
    assert report["metrics"]["mdpo"]["pref/rejected/reward_acc"] > 0.5
    table = open(tmp_path / "ev" / "eval.md").read()
    assert table.startswith("| metric | base | mdpo | dpo |")
    out = capsys.readouterr().out
    assert "| reliance/blind_acc |" in out
    if importlib.util.find_spec("matplotlib"):
        assert os.path.isfile(tmp_path / "ev" / "curves.png") and os.path.isfile(tmp_path / "ev" / "metrics.png")
    else:
        assert "--plot needs matplotlib" in out and "pip install matplotlib" in out


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


def test_generation_length_and_pope_parser_options():
    args = evaluate.build_parser().parse_args([])
    assert args.max_new_tokens == 1024  # long descriptions, as published CHAIR evaluations allow
    assert args.pope_parse == "standard"
    with pytest.raises(SystemExit):
        evaluate.build_parser().parse_args(["--pope-parse", "loose"])


def test_benchmarks_read_hand_made_answers(tmp_path, image_dir, monkeypatch):
    """The benchmarks on answers we wrote ourselves (the model's generation replaced), with each
    figure worked by hand."""
    canned = {"Describe.": ["A dog and a dog.", "A cat on a sofa."],
              "Is there a dog?": ["There is not a dog. A cat.", "There is a cat on the bed."]}
    asked = []

    def fake_answer(model, processor, prompts, images, *, max_new_tokens, **kwargs):
        asked.append(max_new_tokens)
        return canned[prompts[0]]
    monkeypatch.setattr(evaluate, "answer", fake_answer)
    chair_path = write_jsonl(tmp_path / "c.jsonl", [
        {"image": "img/0.png", "prompt": "Describe.", "objects": ["dog"]},
        # the reference captions' objects are true objects too: the sofa (a couch) is not hallucinated
        {"image": "img/1.png", "prompt": "Describe.", "objects": ["cats"], "captions": ["A cat on a couch."]}])
    pope_path = write_jsonl(tmp_path / "p.jsonl", [
        {"image": "img/0.png", "question": "Is there a dog?", "answer": "no"},
        {"image": "img/1.png", "question": "Is there a dog?", "answer": "yes"}])
    for parse in ("standard", "strict"):
        out = tmp_path / parse
        assert evaluate.run(["--model", "tiny-llava", "--bench", "chair", chair_path, "--bench", "pope", pope_path,
                             "--out", str(out), "--pope-parse", parse]) == 0
        m = json.load(open(out / "eval.json"))["metrics"]["base"]
        # CHAIR: dog, dog (true) | cat, couch (true, the couch from the caption): 4 mentions, none hallucinated
        assert (m["chair/chair_s"], m["chair/chair_i"], m["chair/coverage"], m["chair/mentions"]) == (0, 0, 1, 4)
        # "A dog and a dog." 5 words, "A cat on a sofa." 5 words; one byte-level token per character: 16, 16
        assert m["chair/mean_answer_words"] == 5 and m["chair/mean_answer_tokens"] == 16
        # 7 and 7 words; 26 and 26 characters
        assert m["pope/mean_answer_words"] == 7 and m["pope/mean_answer_tokens"] == 26
        saved = [json.loads(line) for line in open(out / "answers-base-pope.jsonl")]
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
    assert asked == [1024] * 4  # the default reaches the generation
    saved = [json.loads(line) for line in open(tmp_path / "strict" / "answers-base-chair.jsonl")]
    assert saved[1] == {"id": "2", "answer": "A cat on a sofa.", "objects": ["cat", "couch"], "hallucinated": []}

    # POPE's splits side by side, each named by its file; a shorter generation on request
    split = write_jsonl(tmp_path / "adversarial.jsonl", [json.loads(line) for line in open(pope_path)])
    assert evaluate.run(["--model", "tiny-llava", "--bench", "pope", pope_path, "--bench", "pope", split,
                         "--out", str(tmp_path / "splits"), "--max-new-tokens", "7"]) == 0
    m = json.load(open(tmp_path / "splits" / "eval.json"))["metrics"]["base"]
    assert m["pope-p/accuracy"] == 1 and m["pope-adversarial/accuracy"] == 1 and "pope/accuracy" not in m
    assert os.path.isfile(tmp_path / "splits" / "answers-base-pope-adversarial.jsonl")
    assert asked[4:] == [7, 7]
