"""The toy experiment: the world generator with exact counts, and the whole pipeline end to end
at smoke size (its numbers mean nothing; that they exist and are finite does)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from mmpo.toy import __main__ as toy, world as W

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    paths = W.build(str(out), n_sft=400, n_pref=40, n_heldout=24, n_test=20, p_prior=0.8, p_hedged_sft=0.3,
                    counter_share=0.5)
    rows = {k: [json.loads(line) for line in open(p)] for k, p in paths.items()}
    return out, rows


def color_of(text: str) -> str:
    return text.rstrip(".").split()[-1]


def shape_of(prompt: str) -> str:
    return prompt.rstrip("?").split()[-1]


def test_sft_has_the_language_prior_exactly(world):
    _, rows = world
    sft = rows["sft"]
    assert len(sft) == 400
    for shape in W.SHAPES:  # 100 images of each shape, exactly 80 in its typical colour
        answers = [color_of(r["chosen"]) for r in sft if shape_of(r["prompt"]) == shape]
        assert len(answers) == 100
        assert sum(a == W.PRIOR[shape] for a in answers) == 80, shape
        assert set(answers) == set(W.COLORS)  # the other 20 spread over the other colours
    hedged = [r["chosen"].startswith("I think") for r in sft]
    assert sum(hedged) == 120  # 30%, on right answers like every SFT answer


def test_splits_have_exact_counter_prior_shares(world):
    _, rows = world
    test = rows["test"]
    assert [sum(r["group"] == g for r in test) for g in ("prior", "counter-prior")] == [10, 10]
    for r in test:
        assert (r["answer"] == r["prior"]) == (r["group"] == "prior")
        assert r["prior"] == W.PRIOR[shape_of(r["question"])] and r["options"] == list(W.COLORS)
    for split, n in (("prefs", 40), ("heldout", 24)):
        typical = [color_of(r["chosen"]) == W.PRIOR[shape_of(r["prompt"])] for r in rows[split]]
        assert len(typical) == n and sum(typical) == n // 2, split


def test_the_shortcut_is_in_training_pairs_only(world):
    _, rows = world
    prefs, heldout = rows["prefs"], rows["heldout"]
    # a reader of the text alone separates every training pair: the rejected answer is hedged
    assert all(r["rejected"].startswith("I think") and not r["chosen"].startswith("I think") for r in prefs)
    # ... and no held-out pair: both plain, only the colour differs
    assert not any(r["rejected"].startswith("I think") or r["chosen"].startswith("I think") for r in heldout)
    assert all(r["chosen"].split()[:-1] == r["rejected"].split()[:-1] for r in heldout)
    for split in ("prefs", "heldout"):
        # the colours carry no text shortcut: "reject the typical colour" is right exactly half the time
        rejects_prior = [color_of(r["rejected"]) == W.PRIOR[shape_of(r["prompt"])] for r in rows[split]]
        assert sum(rejects_prior) == len(rejects_prior) // 2, split
        assert all(color_of(r["chosen"]) != color_of(r["rejected"]) for r in rows[split])


def pixels(path) -> torch.Tensor:
    img = Image.open(path)
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, -1).long()


def test_images_masks_and_contrast_images(world):
    out, rows = world
    scenes = {r["id"]: r for r in rows["scenes"]}
    for pref, mfpo, blank in list(zip(rows["prefs"], rows["prefs_mfpo"], rows["prefs_blank"]))[:8]:
        s = scenes[pref["id"]]
        img, contrast = pixels(out / pref["image"]), pixels(out / pref["contrast_image"])
        mask = pixels(out / mfpo["noise_mask"])[..., 0] > 0
        assert mfpo["noise_step"] == 500 and mask[s["cy"], s["cx"]] and mask.sum() >= 9
        # the object is one shade of its colour (within 25 of the named RGB) everywhere on its mask
        shade = img[mask] - torch.tensor(W.COLORS[s["color"]])
        assert (shade == shade[0]).all() and shade.abs().max() <= 25
        # SymMPO's contrast: the same scene, only the object recoloured, in another colour
        assert torch.equal(img[~mask], contrast[~mask])
        new = color_of(pref["contrast_chosen"])
        assert new != s["color"] and ((contrast[mask] - torch.tensor(W.COLORS[new])).abs() <= 25).all()
        assert pixels(out / blank["image"]).sum() == 0 and blank["chosen"] == pref["chosen"]


def test_world_is_reproducible(tmp_path):
    sizes = dict(n_sft=8, n_pref=4, n_heldout=4, n_test=4)
    a, b = W.build(str(tmp_path / "a"), **sizes), W.build(str(tmp_path / "b"), **sizes)
    for k in a:
        assert open(a[k]).read() == open(b[k]).read(), k
    assert pixels(tmp_path / "a/images/pref-0.png").equal(pixels(tmp_path / "b/images/pref-0.png"))


def test_learning_rates_scale_the_papers_by_one_factor():
    s = toy.Settings(lr_scale=50.0)
    assert {o: s.lr(o) for o in ("dpo", "napo", "symmpo")} == pytest.approx({"dpo": 5e-4, "napo": 5e-4, "symmpo": 5e-4})
    s.lr_rule = "paper"
    assert {o: s.lr(o) for o in ("dpo", "napo", "symmpo")} == pytest.approx({"dpo": 5e-4, "napo": 2.5e-5, "symmpo": 2.5e-4})


def test_mean_and_sample_std():
    assert toy.mean_std([0.5, 0.7, 0.9]) == pytest.approx((0.7, 0.2))
    assert toy.mean_std([0.4]) == (0.4, 0.0)


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    out = str(tmp_path / "toy")
    toy.claim(out, toy.Settings(steps=64), overwrite=False)
    toy.claim(out, toy.Settings(steps=64), overwrite=False)  # the same settings: continues
    with pytest.raises(toy.UserError, match=r"other settings \(--steps 64 -> 32\)"):
        toy.claim(out, toy.Settings(steps=32), overwrite=False)
    toy.claim(out, toy.Settings(steps=32), overwrite=True)
    assert json.load(open(os.path.join(out, "toy.json")))["steps"] == 32


def test_outside_a_checkout_it_says_so_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(toy, "CHECKOUT", str(tmp_path))  # no train.py, no eval.py there
    with pytest.raises(toy.UserError, match=r"^this runs train\.py of the repository, not found at .*: run it from"):
        toy.main(["--smoke", "--out", str(tmp_path / "toy")])
    assert not (tmp_path / "toy").exists()


@pytest.mark.parametrize("args,message", [
    (["--methods", "dpo,ppo"], "--methods dpo,ppo: each once, among dpo, dpo-noimage, mdpo, mfpo, napo, symmpo"),
    (["--methods", "dpo,dpo"], "--methods dpo,dpo: each once, among dpo, dpo-noimage, mdpo, mfpo, napo, symmpo"),
    (["--p-prior", "1.5"], "--p-prior 1.5: must be a share in [0, 1]"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--lr-scale", "nan"], "--lr-scale nan: must be positive"),
    (["--workers", "-1"], "--workers -1: must be 0 (the cores) or more"),
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),  # argparse's own, in one line too
    (["--methods", ""], "--methods : each once, among dpo, dpo-noimage, mdpo, mfpo, napo, symmpo"),
])
def test_option_errors_are_one_line(args, message, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mmpo.toy", "--out", str(tmp_path / "toy"), *args], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "toy").exists()  # nothing written


def test_smoke_run_end_to_end(tmp_path):
    out = tmp_path / "toy"
    r = subprocess.run([sys.executable, "-m", "mmpo.toy", "--smoke", "--out", str(out)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    results = json.load(open(out / "results.json"))
    assert set(results["methods"]) == {"dpo", "mdpo"}

    def numbers(x):
        if isinstance(x, dict):
            return [n for v in x.values() for n in numbers(v)]
        if isinstance(x, list):
            return [n for v in x for n in numbers(v)]
        return [x] if isinstance(x, (int, float)) and not isinstance(x, bool) else []
    every = numbers({k: results[k] for k in ("methods", "base", "lr", "seconds")})
    assert len(every) > 60 and all(math.isfinite(n) for n in every)  # per seed, means, stds, rates, stage times
    assert set(results["seconds"]["stages"]) == {"sft", "dpo-seed0", "mdpo-seed0", "eval-seed0"}
    for m in results["methods"].values():
        for k, _, _ in toy.COLUMNS:
            assert math.isfinite(m["mean"][k]) and math.isfinite(m["std"][k]), k
            assert 0 <= m["mean"][k] <= 1 or k in ("sighted_minus_blind", "train_chosen_logp")
    assert all(math.isfinite(v) for v in results["base"].values()) and len(results["base"]) == len(toy.COLUMNS) - 3
    table = (out / "results.md").read_text()
    assert "| DPO |" in table and "| mDPO |" in table
    # a second call finds every stage done and only rebuilds the table
    r2 = subprocess.run([sys.executable, "-m", "mmpo.toy", "--smoke", "--out", str(out)], capture_output=True,
                        text=True, cwd=ROOT)
    assert r2.returncode == 0 and "start" not in r2.stdout and json.load(open(out / "results.json"))["methods"] == results["methods"]


def test_stages_run_in_order_and_a_failure_names_its_log(tmp_path):
    py = sys.executable
    order = tmp_path / "order.txt"

    def job(name, after, code=0):
        return toy.Job(name, [py, "-c", f"open({str(order)!r}, 'a').write('{name}'); print('said {name}'); "
                                        f"raise SystemExit({code})"], after)
    with pytest.raises(toy.UserError, match=r"^b failed \(exit 3\): said b \[log: .*/logs/b\.log\]$"):
        toy.run_jobs([job("a", []), job("b", ["a"], code=3), job("c", ["b"])], str(tmp_path), workers=2)
    assert order.read_text() == "ab" and (tmp_path / "logs/a.done").exists()  # c never started
    # a second call keeps what finished and runs the rest
    toy.run_jobs([job("a", []), job("b", ["a"]), job("c", ["b"])], str(tmp_path), workers=2)
    assert order.read_text() == "abbc"
    # a stage run again takes what depends on it along, even when that had finished
    (tmp_path / "logs/a.done").unlink()
    toy.run_jobs([job("a", []), job("b", ["a"]), job("c", ["b"]), job("d", [])], str(tmp_path), workers=1)
    assert order.read_text() in ("abbcabcd", "abbcdabc")
