"""eval.py: CHAIR and POPE by hand, image reliance on a model that ignores the image, columns."""
import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
import torch

import eval as evaluate
import train
from conftest import write_jsonl
from mmpo.hallucination import chair, mentioned_objects, parse_yes_no, pope
from mmpo.models import tiny_model


def test_object_mentions():
    assert mentioned_objects("A puppy and two hot dogs near the traffic lights.") == {"dog", "hot dog", "traffic light"}
    assert mentioned_objects("Three people, some women and a man.") == {"person"}
    assert mentioned_objects("A beautiful sunset over calm water.") == set()
    assert mentioned_objects("wine glasses, knives and a teddy bear") == {"wine glass", "knife", "teddy bear"}


def test_chair_by_hand():
    answers = [
        "A puppy sits on a couch next to two traffic lights.",  # dog (true), couch + traffic light (not)
        "There are dogs, a dog and more dogs.",                  # dog, once
        "A beautiful sunset over the water.",                     # no object at all
        "A hot dog on a dining table.",                           # hot dog is not a dog
    ]
    truths = [["dog", "chair"], ["dog"], ["boat"], ["hot dog", "tables"]]
    m = chair(answers, truths)
    assert m["chair_s"] == pytest.approx(1 / 4)        # one answer hallucinates
    assert m["chair_i"] == pytest.approx(2 / 6)        # 2 hallucinated of 3 + 1 + 0 + 2 mentioned
    assert m["coverage"] == pytest.approx(4 / 6)       # 1 + 1 + 0 + 2 of 2 + 1 + 1 + 2 true objects


def test_pope_by_hand():
    answers = ["Yes, there is a dog.", "No.", "no, there isn't", "I think so", "YES", "Nope"]
    labels = ["yes", "no", "yes", "yes", "no", "no"]
    assert [parse_yes_no(a) for a in answers] == ["yes", "no", "no", None, "yes", None]
    m = pope(answers, labels)
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(0.4)
    assert m["yes_ratio"] == pytest.approx(2 / 6)
    assert m["unparsed"] == 2


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
    for col in report["columns"]:
        m = report["metrics"][col]
        for key in ("pref/rejected/reward_acc", "pref/lang_biased/logp_acc", "pref/contrast_on_image/reward_margin",
                    "reliance/noise/cond_acc", "reliance/blind_acc", "chair/chair_i", "pope/f1"):
            assert key in m
        assert m["chair/answers"] == 6 and m["pope/answers"] == 6
        assert os.path.isfile(tmp_path / "ev" / f"answers-{col}-pope.jsonl")
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
                                                    {"image": "img/0.png", "prompt": "D.", "objects": "dog"}])
    assert evaluate.run(["--model", "tiny-llava", "--bench", "chair", chair_ok, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {chair_ok}:1: field 'objects': 'unicorn' is not one of the 80 COCO objects or their synonyms",
        f"error: {chair_ok}:2: field 'objects': must be a list of object names"]
    assert evaluate.run(["--model", "tiny-llava", "--bench", "pope", pope_path, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {pope_path}:1: field 'answer': must be \"yes\" or \"no\"",
        f"error: {pope_path}:2: field 'question': missing"]
    assert evaluate.run(["--model", "tiny-llava", "--bench", "vqa", pope_path]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
