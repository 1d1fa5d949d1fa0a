"""The captioning world: glyphs a model can tell apart, captions that CHAIR scores as the world
means them, the co-occurrence prior and every share exact, the shortcut in training pairs only."""
import itertools
import json
import math

import pytest
import torch
from PIL import Image

import eval as evaluate
from mmpo.common import chair as M
from mmpo.toy import captions as C

N = dict(n_sft=200, n_pref=24, n_heldout=12, n_test=12)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("captions")
    paths = C.build(str(out), **N, p_cooccur=0.8, counter_share=0.5, p_text_only=0.1, p_image_only=0.1)
    rows = {k: [json.loads(line) for line in open(p)] for k, p in paths.items()}
    return out, paths, rows


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


def pixels(img: Image.Image) -> torch.Tensor:
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, -1).long()


def test_every_class_is_a_coco_word_that_chair_reads_as_itself():
    for name in C.GLYPHS:
        assert M.object_mentions(f"There is a {name}.") == [name] and M.to_category(name) == name
    assert C.caption(["fork"]) == "There is a fork."
    assert C.caption(["fork", "knife", "cup"]) == "There is a fork, a knife and a cup."
    assert M.object_mentions(C.caption(list(C.GLYPHS))) == list(C.GLYPHS)


@pytest.mark.parametrize("seed", [0, 1])
def test_glyphs_differ_in_shape_and_colour(seed):
    # one seed puts any class in the same place with the same jitter: only the glyph changes
    drawn = {n: [pixels(x) for x in C.render(C.Scene((n,), (1,), seed))] for n in C.GLYPHS}
    for a, b in itertools.combinations(C.GLYPHS, 2):
        (img_a, mask_a), (img_b, mask_b) = drawn[a], drawn[b]
        mask_a, mask_b = mask_a[..., 0] > 0, mask_b[..., 0] > 0
        assert torch.equal(img_a[~(mask_a | mask_b)], img_b[~(mask_a | mask_b)])
        assert (mask_a ^ mask_b).sum() >= 10, (a, b)  # shapes: at least 10 pixels apart
        colour_gap = (img_a[mask_a].float().mean(0) - img_b[mask_b].float().mean(0)).abs().sum()
        assert colour_gap >= 60, (a, b)


def test_chair_scores_captions_as_the_world_means_them(world):
    _, _, rows = world
    scenes = {r["id"]: r for r in rows["scenes"]}
    prefs, heldout, test = rows["prefs"], rows["heldout"], rows["test"]
    truths = [scenes[r["id"]]["objects"] for r in prefs]
    # every chosen caption: nothing hallucinated, every object named
    for captions, truth in (([r["chosen"] for r in prefs], truths),
                            ([C.caption(r["objects"]) for r in test], [r["objects"] for r in test])):
        m = M.chair(captions, truth)
        assert (m["chair_s"], m["chair_i"], m["coverage"]) == (0.0, 0.0, 1.0) and m["mentions"] > 0
    # every rejected caption: exactly one hallucinated object, every true one still named
    for r, truth in zip(prefs, truths):
        judged = M.chair_answer(r["rejected"], truth)
        assert len(judged["hallucinated"]) == 1 and set(judged["objects"]) - set(judged["hallucinated"]) == set(truth)
    for r in heldout:  # one hallucinated, one true object left out
        judged = M.chair_answer(r["rejected"], scenes[r["id"]]["objects"])
        assert len(judged["hallucinated"]) == 1 and len(judged["objects"]) == len(scenes[r["id"]]["objects"])


def test_counter_pairs_reject_the_lone_leads_companion(world):
    # a lone lead wins over a lone companion: the prior's hallucination is the knife
    fork_and_spoon = C.Scene(("fork", "spoon"), (0, 3), seed=0)
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        assert C.added(fork_and_spoon, g) == "There is a fork, a knife and a spoon."
        assert C.replaced(fork_and_spoon, g) == C.Scene(("fork", "knife"), (0, 3), seed=0)  # in the spoon's cell
    # every object with its partner: any absent object, at the end
    pair = C.Scene(("fork", "knife"), (0, 1), seed=0)
    assert C.added(pair, torch.Generator()).startswith("There is a fork, a knife and a ")
    _, _, rows = world
    scenes = {r["id"]: r for r in rows["scenes"]}
    for r in rows["prefs"]:
        s = scenes[r["id"]]
        extra = M.chair_answer(r["rejected"], s["objects"])["hallucinated"][0]
        alone = [o for o in s["objects"] if o in C.LEADS and C.PARTNER[o] not in s["objects"]]
        assert (extra == C.PARTNER[alone[0]]) if s["counter"] else not alone


def test_shares_are_exact(world):
    _, _, rows = world
    scenes = {r["id"]: r for r in rows["scenes"]}
    # the held-out couples' first scenes are drawn as the other splits (the second: its rejected caption's scene)
    for split, n in (("prefs", N["n_pref"]), ("heldout", N["n_heldout"] // 2), ("test", N["n_test"])):
        counter = [scenes[r["id"]]["counter"] for r in rows[split][::2 if split == "heldout" else 1]]
        assert len(counter) == n and sum(counter) == half_up(n * 0.5), split
    assert all(r["group"] == ("counter" if scenes[r["id"]]["counter"] else "typical") for r in rows["test"])
    sft = rows["sft"]
    text = [r for r in sft if "image" not in r]
    assert len(sft) == N["n_sft"] and len(text) == half_up(N["n_sft"] * 0.1)
    assert sum(r.get("prompt") == "" for r in sft) == half_up(N["n_sft"] * 0.1)
    for r in text:  # the prior in words: a lead always with its companion
        lead = r["prompt"].removeprefix("Describe a scene with a ").rstrip(".")
        assert lead in C.LEADS and r["chosen"] == C.caption([lead, C.PARTNER[lead]])


def test_sft_images_have_the_cooccurrence_prior(world):
    _, _, rows = world
    scenes = {r["id"]: r for r in rows["scenes"]}
    shown = [scenes[r["id"]] for r in rows["sft"] if "image" in r]
    assert all(r["chosen"] == C.caption(scenes[r["id"]]["objects"]) for r in rows["sft"] if "image" in r)
    leads = [C.PARTNER[o] in s["objects"] for s in shown for o in s["objects"] if o in C.LEADS]
    assert sum(leads) == half_up(len(leads) * 0.8)
    lone_companions = sum(o not in C.LEADS and C.PARTNER[o] not in s["objects"] for s in shown for o in s["objects"])
    assert lone_companions > 0
    assert {len(s["objects"]) for s in shown} == {1, 2, 3, 4}


def test_the_shortcut_is_in_training_pairs_only(world):
    _, _, rows = world
    # a reader of the text alone wins every training pair: the rejected caption is one object longer
    for r in rows["prefs"]:
        assert len(r["rejected"]) > len(r["chosen"])
        assert len(M.object_mentions(r["rejected"])) == len(M.object_mentions(r["chosen"])) + 1
    for r in rows["heldout"]:  # and no held-out pair: as many objects and words
        assert len(r["rejected"].split()) == len(r["chosen"].split()) and r["rejected"] != r["chosen"]


def test_images_masks_and_blank(world):
    out, _, rows = world
    scenes = {r["id"]: r for r in rows["scenes"]}
    for pref, mfpo, blank in zip(rows["prefs"], rows["prefs_mfpo"], rows["prefs_blank"]):
        s = scenes[pref["id"]]
        assert "noise_mask" not in pref and {**mfpo, "noise_mask": None, "noise_step": None} == \
            {**pref, "noise_mask": None, "noise_step": None}  # the same pair, with MFPO's region
        mask = pixels(Image.open(out / mfpo["noise_mask"]))[..., 0]
        assert mfpo["noise_step"] == 500 and set(mask.unique().tolist()) <= {0, 255}
        for cell in range(4):  # the oracle region: every object, nothing else
            inside = mask[16 * (cell // 2):16 * (cell // 2 + 1), 16 * (cell % 2):16 * (cell % 2 + 1)]
            assert bool(inside.any()) == (cell in s["cells"])
        assert pixels(Image.open(out / blank["image"])).sum() == 0 and blank["chosen"] == pref["chosen"]


def test_test_rows_are_read_by_eval(world):
    _, paths, rows = world
    read = evaluate.read_bench("chair", paths["test"])
    assert [r["objects"] for r in read] == [r["objects"] for r in rows["test"]]


def test_world_is_reproducible(tmp_path):
    small = dict(n_sft=10, n_pref=4, n_heldout=4, n_test=4)
    a, b = C.build(str(tmp_path / "a"), **small), C.build(str(tmp_path / "b"), **small)
    for k in a:
        assert open(a[k]).read() == open(b[k]).read(), k
    images = sorted(p.name for p in (tmp_path / "a/images").iterdir())
    assert images == sorted(p.name for p in (tmp_path / "b/images").iterdir()) and "pref-3-mask.png" in images
    for name in images:
        assert (tmp_path / "a/images" / name).read_bytes() == (tmp_path / "b/images" / name).read_bytes(), name
    c = C.build(str(tmp_path / "c"), **small, seed=1)
    assert open(c["scenes"]).read() != open(a["scenes"]).read()
