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

from mmpo.toy import __main__ as toy, claims as C, results as R, stats, world as W

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
    qa = [r for r in sft if r.get("image") and r["prompt"]]
    for shape in W.SHAPES:  # 320 image + question rows: 80 of each shape, exactly 64 in its typical colour
        answers = [color_of(r["chosen"]) for r in qa if shape_of(r["prompt"]) == shape]
        assert len(answers) == 80
        assert sum(a == W.PRIOR[shape] for a in answers) == 64, shape
        assert set(answers) == set(W.COLORS)  # the other 16 spread over the other colours
    assert sum(r["chosen"].startswith("I think") for r in qa) == 96  # 30%, on right answers like every SFT answer
    # as LLaVA-1.5's SFT data: 10% the question alone (answered with the prior), 10% the image alone
    text = [r for r in sft if "image" not in r]
    assert len(text) == 40 and all(color_of(r["chosen"]) == W.PRIOR[shape_of(r["prompt"])] for r in text)
    alone = [r for r in sft if r.get("image") and not r["prompt"]]
    assert len(alone) == 40 and all(r["chosen"].startswith("A ") for r in alone)


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
    for pref, oracle, mfpo, blank in list(zip(rows["prefs"], rows["prefs_contrast"], rows["prefs_mfpo"],
                                              rows["prefs_blank"]))[:8]:
        s = scenes[pref["id"]]
        assert "contrast_image" not in pref  # prepare symmpo retrieves one; the oracle's is an extra variant
        img, contrast = pixels(out / pref["image"]), pixels(out / oracle["contrast_image"])
        mask = pixels(out / mfpo["noise_mask"])[..., 0] > 0
        assert mfpo["noise_step"] == 500 and mask[s["cy"], s["cx"]] and mask.sum() >= 9
        # the object is one shade of its colour (within 25 of the named RGB) everywhere on its mask
        shade = img[mask] - torch.tensor(W.COLORS[s["color"]])
        assert (shade == shade[0]).all() and shade.abs().max() <= 25
        # SymMPO's contrast: the same scene, only the object recoloured, in another colour
        assert torch.equal(img[~mask], contrast[~mask])
        new = color_of(oracle["contrast_chosen"])
        assert new != s["color"] and ((contrast[mask] - torch.tensor(W.COLORS[new])).abs() <= 25).all()
        assert pixels(out / blank["image"]).sum() == 0 and blank["chosen"] == pref["chosen"]


def test_held_out_couples_carry_no_text_preference(world, tmp_path):
    """Each couple: the same scene with the object in the other answer's colour (captions: the
    rejected caption's scene, one object swapped in place), the answers swapped; so reading the
    text alone is right on exactly one pair of each couple."""
    from mmpo.toy import captions as CAP
    out, rows = world
    cap = tmp_path / "captions"
    cap_rows = [json.loads(line) for line in open(CAP.build(str(cap), n_sft=40, n_pref=8, n_heldout=24, n_test=4)["heldout"])]
    for folder, heldout in ((out, rows["heldout"]), (cap, cap_rows)):
        assert len(heldout) == 24 and [r["couple"] for r in heldout] == [i // 2 for i in range(24)]
        for a, b in zip(heldout[::2], heldout[1::2]):
            assert (a["prompt"], a["chosen"], a["rejected"]) == (b["prompt"], b["rejected"], b["chosen"])
            diff = (pixels(folder / a["image"]) != pixels(folder / b["image"])).any(-1)
            assert 0 < diff.sum() < 0.25 * diff.numel()  # only where the object changed
    scenes = {r["id"]: r for r in rows["scenes"]}
    for a, b in zip(rows["heldout"][::2], rows["heldout"][1::2]):
        sa, sb = scenes[a["id"]], scenes[b["id"]]
        assert {**sa, "id": 0, "color": 0} == {**sb, "id": 0, "color": 0} and sb["color"] == color_of(b["chosen"])
        assert {sa["color"] == W.PRIOR[sa["shape"]], sb["color"] == W.PRIOR[sb["shape"]]} == {True, False}


def test_a_share_of_training_pairs_carries_the_shortcut(tmp_path):
    from mmpo.toy import captions as CAP
    sizes = dict(n_sft=40, n_pref=20, n_heldout=4, n_test=4, shortcut_share=0.25)
    colour = [json.loads(line) for line in open(W.build(str(tmp_path / "w"), **sizes)["prefs"])]
    assert sum(r["rejected"].startswith("I think") for r in colour) == 5
    caps = [json.loads(line) for line in open(CAP.build(str(tmp_path / "c"), **sizes)["prefs"])]
    longer = [len(r["rejected"].split()) - len(r["chosen"].split()) for r in caps]
    assert longer.count(0) == 15 and all(k in (2, 3) for k in longer if k)  # one object more, or as long


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


def test_the_bootstrap_draws_seeds_then_their_examples():
    """Each replicate's weights: every seed drawn brings n examples of its own, so a replicate
    holds (seeds x n) draws; one seed and all-ones weights give the figure itself."""
    w = stats.replicates(3, {"test": 5, "train": 1}, reps=400, seed=1)
    assert w["test"].shape == (400, 3, 5) and (w["test"].sum((1, 2)) == 15).all()
    assert (w["train"].sum((1, 2)) == 3).all()
    # the seeds drawn are shared: a seed's examples are in a replicate exactly when it was drawn
    assert torch.equal(w["test"].sum(2) / 5, w["train"][..., 0])
    values = {"test": {"hit": torch.tensor([[1.0, 0, 0, 1, 1]] * 3), "n": torch.ones(3, 5)}}
    point, reps = stats.figure_and_interval(lambda S: S["test"]["hit"] / S["test"]["n"], values, w)
    assert point == 0.6 and reps.shape == (400,) and abs(reps.mean().item() - 0.6) < 0.03
    lo, hi = stats.interval(reps)  # 15 draws of p = 0.6: a binomial interval about +-0.25 wide
    assert 0.3 <= lo < 0.6 < hi <= 0.9
    # a difference against a column shifted by a constant: no noise at all
    _, shifted = stats.figure_and_interval(lambda S: S["test"]["hit"] / S["test"]["n"] + 0.1, values, w)
    assert stats.interval(shifted - reps) == pytest.approx((0.1, 0.1))
    assert all(math.isnan(x) for x in stats.interval(torch.tensor([float("nan")] * 3)))  # no count drawn: no figure


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


AMONG = "each once, among dpo, dpo-noimage, mdpo, mfpo, napo, symmpo, symmpo-oracle"


@pytest.mark.parametrize("args,message", [
    (["--methods", "dpo,ppo"], f"--methods dpo,ppo: {AMONG}"),
    (["--methods", "dpo,dpo"], f"--methods dpo,dpo: {AMONG}"),
    (["--methods", ""], f"--methods : {AMONG}"),
    (["--worlds", "colour,maze"], "--worlds colour,maze: each once, among colour, captions"),
    (["--shortcut", "long"], "--shortcut long: hedge or none"),
    (["--p-prior", "1.5"], "--p-prior 1.5: must be a share in [0, 1]"),
    (["--p-cooccur", "-0.1"], "--p-cooccur -0.1: must be a share in [0, 1]"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--lr-scale", "nan"], "--lr-scale nan: must be positive"),
    (["--workers", "-1"], "--workers -1: must be 0 (the cores) or more"),
    (["--cap-n-heldout", "7"], "--cap-n-heldout 7: must be even: the held-out pairs come in couples"),
    (["--shortcut-share", "2"], "--shortcut-share 2.0: must be a share in [0, 1]"),
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),  # argparse's own, in one line too
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
    assert set(results["seconds"]["stages"]) == {f"{stage}-{w}-0" for w in ("colour", "captions")
                                                 for stage in ("sft", "dpo", "mdpo", "eval")}
    for w, r in results["worlds"].items():
        assert set(r["figures"]) == {"base", "dpo", "mdpo"} and set(r["differences"]) == {"dpo - base", "mdpo - base",
                                                                                            "mdpo - dpo"}
        for name, figures in r["figures"].items():
            keys = [k for k, _, _ in R.COLUMNS[w] if name != "base" or k not in R.NO_BASE]
            assert list(figures) == keys
            for k, (point, lo, hi) in figures.items():  # one seed of a few examples: wide, but an interval
                if point is not None and lo is not None:
                    assert lo - 1e-9 <= point <= hi + 1e-9, (w, name, k)
        # the figures are eval.py's own, computed again from its saved answers and log-probs
        report = json.load(open(out / "eval" / f"{w}-0" / "eval.json"))["metrics"]
        same = {"colour": (("acc_counter", "qa/counter-prior/accuracy"), ("heldout_pref_acc", "pref/rejected/logp_acc")),
                "captions": (("chair_s", "chair/chair_s"), ("chair_i", "chair/chair_i"), ("coverage", "chair/coverage"),
                             ("cond_acc_noise", "reliance/noise/cond_acc"))}[w]
        for k, e in same:
            assert r["figures"]["dpo"][k][0] == pytest.approx(report["dpo-" + w + "-0"][e]), (w, k)
    table = (out / "results.md").read_text()
    assert "### The colour world" in table and "### The captions world" in table and "| DPO |" in table
    # the reading as code: every claim of a world this run has, with its verdict (smoke: dpo and mdpo only)
    claims_md = table[table.index("## Claims"):]
    assert claims_md.count("\n- **") == len(C.CLAIMS) and "**not run** (captions) SymMPO's coverage" in claims_md
    # a second call finds every stage done and only rebuilds the table
    r2 = subprocess.run([sys.executable, "-m", "mmpo.toy", "--smoke", "--out", str(out)], capture_output=True,
                        text=True, cwd=ROOT)
    assert r2.returncode == 0 and "start" not in r2.stdout and json.load(open(out / "results.json"))["worlds"] == \
        results["worlds"]


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


# figures in the shape of results.json, each claim's verdict worked out by hand below
LABELS = {"base": "base (SFT)", "dpo": "DPO", "dpo-noimage": "DPO (no image)", "mdpo": "mDPO", "mfpo": "MFPO",
          "napo": "NaPO", "symmpo": "SymMPO"}
FIGURES = {"worlds": {
    "colour": {"labels": LABELS,
               "figures": {"dpo": {"heldout_reward_acc": [0.875, 0.719, 0.974]},
                           "dpo-noimage": {"heldout_reward_acc": [0.520, 0.499, 0.570]}},
               "differences": {"dpo-noimage - dpo": {"heldout_reward_acc": [-0.355, -0.45, -0.2]},
                               "mdpo - dpo": {"heldout_reward_acc": [0.05, -0.01, 0.1]},
                               "symmpo - base": {"acc_counter": [0.008, -0.016, 0.032]}}},
    "captions": {"labels": LABELS,
                 "figures": {"base": {"companion": [0.065, 0.023, 0.125]},
                             "dpo": {"heldout_reward_acc": [0.526, 0.440, 0.607]}},
                 "differences": {"dpo - base": {"coverage": [-0.720, -0.772, -0.668], "chair_i": [-0.017, -0.064, 0.055]},
                                 "dpo-noimage - base": {"chair_i": [0.102, 0.055, 0.131]},
                                 "napo - base": {"chair_i": [0.089, 0.053, 0.133]},
                                 "mdpo - base": {"companion": [-0.047, -0.109, 0.003], "chair_i": [-0.008, -0.036, 0.024]},
                                 "mfpo - base": {"companion": [-0.049, -0.090, -0.021], "chair_i": [0.01, -0.01, 0.03]},
                                 "symmpo - base": {"coverage": [-0.074, -0.097, -0.050], "chair_i": [-0.005, -0.023, 0.012],
                                                   "companion": [-0.044, -0.083, -0.017]}}},
}}


def verdict(results, world, start):
    return next(v for c, _, v in C.verdicts(results) if c.world == world and c.text.startswith(start))


def test_claims_read_their_figures_with_the_thresholds_they_state():
    """At chance: the interval holds 0.5 (blind DPO's [0.499, 0.570] does, DPO's colour [0.719,
    0.974] does not); beyond the noise: the difference's interval excludes 0 (mDPO − DPO [-0.01,
    0.1] does not); a method the run lacks: not run; the companion claim applies from a base
    rate of 10% (6.5% here: does not apply; 12% with mDPO's interval holding 0: failed)."""
    F = FIGURES
    assert [verdict(F, "colour", t) for t in ("blind DPO's", "DPO's held-out reward accuracy is at", "DPO's held-out "
            "reward accuracy is above", "mDPO's", "SymMPO's held", "SymMPO's counter")] == \
        ["held", "failed", "held", "failed", "not run", "held"]
    assert [verdict(F, "captions", t) for t in ("blind DPO's", "DPO's held-out reward accuracy is at", "DPO's coverage",
            "SymMPO's coverage", "no preference", "where the base")] == \
        ["not run", "held", "held", "failed", "failed", "does not apply"]
    no_chair_rise = next(figs for c, figs, _ in C.verdicts(F) if "CHAIR_i" in c.text)
    assert {k for k, x in no_chair_rise.items() if C.above(x)} == {"DPO (no image) − base", "NaPO − base"}
    hallucinating = json.loads(json.dumps(F))
    hallucinating["worlds"]["captions"]["figures"]["base"]["companion"] = [0.12, 0.08, 0.16]
    assert verdict(hallucinating, "captions", "where the base") == "failed"  # mDPO's [-0.109, 0.003] holds 0
    hallucinating["worlds"]["captions"]["differences"]["mdpo - base"]["companion"] = [-0.05, -0.1, -0.001]
    assert verdict(hallucinating, "captions", "where the base") == "held"
    # across runs: held in every run only where it held in each
    table = C.across({"one": F, "two": hallucinating})
    line = next(x for x in table.splitlines() if "where the base" in x)
    assert line.endswith("| does not apply | held | held where it applies (1 of 2) |")
    assert C.across({"one": F}).count("where it applies") == 0  # never where it applies nowhere
    assert next(x for x in C.across({"one": hallucinating, "two": F, "three": F}).splitlines()
                if "where the base" in x).endswith("| held | does not apply | does not apply | held where it applies (1 of 3) |")
    failed = json.loads(json.dumps(hallucinating))
    failed["worlds"]["captions"]["figures"]["base"]["companion"] = [0.12, 0.08, 0.16]
    failed["worlds"]["captions"]["differences"]["mdpo - base"]["companion"] = [-0.047, -0.109, 0.003]
    assert next(x for x in C.across({"one": F, "two": failed}).splitlines()
                if "where the base" in x).endswith("| does not apply | failed | no |")
    line = next(x for x in table.splitlines() if "DPO's coverage" in x)
    assert line.endswith("| held | held | **held** |")
