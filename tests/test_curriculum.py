"""MFPO's easy-to-hard curriculum: entropy scores, stages, training order, reference refresh."""
import os

import pytest
import torch
import torch.nn.functional as F

import train
from conftest import assert_identical_runs, metrics, train_killed_after, write_jsonl
from mmpo.training import curriculum
from mmpo.training.curriculum import epoch_order, plan
from mmpo.data import PreferenceDataset, collate
from mmpo.tiny import tiny_model


def test_entropy_scores_by_hand_and_stages_partition(synthetic):
    model, proc = tiny_model("tiny-llava")
    ds = PreferenceDataset(synthetic, proc, ("chosen", "rejected", "chosen_on_corrupt"))
    scores = curriculum.entropy_scores(model, ds, batch_size=5, pad_id=proc.tokenizer.pad_token_id)
    assert set(scores) == {r["id"] for r in ds.rows}
    # by hand for one example: a plain forward, entropy at each position predicting a chosen token
    ex = ds.with_views(("chosen",))[3]
    batch = collate([ex], ("chosen",), proc.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, **batch.images[0]).logits[0]
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    logp = F.log_softmax(logits[P - 1:P + R - 1].float(), -1)
    want = (-(logp.exp() * logp).sum(-1)).mean().item()
    assert scores[ex.id] == pytest.approx(want, rel=1e-5)

    ids = [r["id"] for r in ds.rows]
    parts = curriculum.stages(ids, scores)
    assert sorted(i for p in parts for i in p) == list(range(len(ids)))  # a partition of the data
    assert [len(p) for p in parts] == [5, 6, 5]
    for easier, harder in zip(parts, parts[1:]):
        assert max(scores[ids[i]] for i in easier) <= min(scores[ids[i]] for i in harder)


def test_difficulty_column_is_used_as_is(tmp_path, image_dir):
    rows = [{"image": "img/0.png", "prompt": "Q", "chosen": "a", "rejected": "b", "difficulty": d} for d in (3, 1, 2)]
    ds = PreferenceDataset(write_jsonl(tmp_path / "d.jsonl", rows), None, ("chosen", "rejected"))
    scores = curriculum.difficulties(None, ds, 2, 0, "unused")
    assert scores == {"1": 3.0, "2": 1.0, "3": 2.0}
    assert curriculum.stages(["1", "2", "3"], scores) == [[1], [2], [0]]


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a = epoch_order(50, seed=1, epoch=0)
    assert sorted(a) == list(range(50))
    assert a == epoch_order(50, seed=1, epoch=0)
    assert a != epoch_order(50, seed=1, epoch=1) and a != epoch_order(50, seed=2, epoch=0)


def test_plan_trains_stages_in_order():
    stages = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    steps = plan(stages, epochs=2, global_batch=2, seed=0)
    assert [s for s, _, _ in steps] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert [e for _, e, _ in steps] == [0, 0, 1, 1] * 3
    for s, _, batch in steps:
        assert set(batch) <= set(stages[s])
    assert sorted(i for _, _, b in steps[:2] for i in b) == [0, 1, 2, 3]  # each epoch of a stage sees it whole


@pytest.mark.parametrize("lora", [["--lora-rank", "0", "--lr", "3e-4"], ["--lora-rank", "8", "--lora-dropout", "0"]])
def test_refresh_reference_per_stage_and_resume_across_it(easy_data, tmp_path, lora):
    args = ["--data", easy_data, "--curriculum", "easy-to-hard", "--refresh-ref-per-stage", *lora,
            "--epochs", "1", "--batch-size", "4", "--save-every", "3", "--warmup", "0"]  # no first step at rate 0
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert train.run([*args, "--out", straight]) == 0
    rows = metrics(straight)
    assert len(rows) == 6  # thirds of 32 examples: 2 steps of 4 each (the rest of each third is dropped)
    # at each stage's first step the reference is the policy itself: every reward is exactly 0
    assert [r["step"] for r in rows if r["rewards/chosen"] == 0.0] == [1, 3, 5]
    assert os.path.isfile(os.path.join(straight, "reference-2.safetensors"))

    train_killed_after(3, [*args, "--out", killed])
    assert train.run(["--resume", killed]) == 0  # the stage-2 reference comes back from reference-2
    assert_identical_runs(straight, killed, 6)


def test_refresh_needs_a_curriculum_and_a_live_reference(capsys):
    assert train.run(["--refresh-ref-per-stage"]) == 2
    assert train.run(["--curriculum", "easy-to-hard", "--refresh-ref-per-stage", "--ref-cache", "x"]) == 2
    assert capsys.readouterr().err.count("--refresh-ref-per-stage needs --curriculum easy-to-hard") == 2
