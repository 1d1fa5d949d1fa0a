"""Building MFPO, NaPO and SymMPO data: regions, generated negatives, retrieval, resume (keywords: test_keywords.py)."""
import hashlib
import json
import os
import types

import pytest
import torch
from PIL import Image

from conftest import write_jsonl
from mmpo import models, perturb
from mmpo.data import chat_prompt
from mmpo.generate import generate
from mmpo.tiny import byte_tokenizer, tiny_model
from mmpo.perturb import stable_seed
from mmpo.prepare import build
from mmpo.prepare.regions import Grounding, detect, region_mask
from mmpo.images import load_image, to_pil, to_tensor

FAST = ["--model", "tiny-llava", "--max-new-tokens", "4", "--batch-size", "2"]


def tiny_detector(seed: int = 0):
    """A tiny random OWLv2 open-vocabulary detector and its processor: MFPO's grounding, no download."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor
    tok = byte_tokenizer(["<s>", "</s>", "<pad>"], "<image>")
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=32, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64,
                  patch_size=16)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    return model.eval(), Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tok)


def tiny_segmenter(seed: int = 0):
    """A tiny random SAM and its processor: MFPO's masks inside the boxes, no download."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    config = SamConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16, output_channels=16, num_pos_feats=8, global_attn_indexes=[0],
                           window_size=0, mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32,
                                 iou_head_hidden_dim=16))
    torch.manual_seed(seed)
    processor = SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                               mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16}))
    return SamModel(config).eval(), processor


@pytest.fixture(scope="module")
def grounding():
    det, det_proc = tiny_detector()
    seg, seg_proc = tiny_segmenter()
    return Grounding(det, det_proc, seg, seg_proc, threshold=0.0)


def fixed_boxes(monkeypatch, processor, boxes):
    """A random detector finds nothing meaningful: its real forward runs, its answer is replaced."""
    calls = []

    def post(outputs, threshold, target_sizes):
        calls.append(outputs.logits.shape)
        return [{"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.ones(len(boxes)),
                 "labels": torch.zeros(len(boxes), dtype=torch.long)}]
    monkeypatch.setattr(processor, "post_process_grounded_object_detection", post)
    return calls


def test_region_mask_stays_inside_the_detected_box(grounding, monkeypatch):
    img = Image.new("RGB", (48, 40), (120, 60, 30))
    calls = fixed_boxes(monkeypatch, grounding.detector_processor, [[8.0, 4.0, 30.0, 28.0]])
    mask = region_mask(grounding, img, ["dog"])
    assert len(calls) == 1  # the detector ran
    box = torch.zeros(40, 48)
    box[4:28, 8:30] = 1
    assert mask.shape == (40, 48) and mask.sum() > 0
    assert (mask * (1 - box)).sum() == 0  # nothing outside the box
    boxes_only = Grounding(grounding.detector, grounding.detector_processor, threshold=0.0)
    assert torch.equal(region_mask(boxes_only, img, ["dog"]), box)  # no segmenter: the box itself
    fixed_boxes(monkeypatch, grounding.detector_processor, [])
    assert region_mask(grounding, img, ["dog"]) is None  # nothing found: the caller noises everything


def test_real_detector_finds_boxes_in_its_padded_square(grounding, monkeypatch):
    """The real (random) OWLv2 runs end to end. Its scores are sigmoids, never 0, so at threshold
    0 boxes must come back. OWLv2 pads an image to a square before detecting, so its boxes are
    read in that square (48 x 48 for a 48 x 40 image, the same scale on both axes), not in the
    image's own 48 x 40, then clipped to the image; a box thinner than a pixel is dropped."""
    proc = grounding.detector_processor
    real, frames = proc.post_process_grounded_object_detection, []

    def spy(outputs, threshold, target_sizes):
        frames.append(target_sizes)
        return real(outputs, threshold=threshold, target_sizes=target_sizes)
    monkeypatch.setattr(proc, "post_process_grounded_object_detection", spy)
    img = to_pil(torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(0)))
    boxes = detect(grounding, img, ["dog", "lamp"])
    assert frames == [[(48, 48)]]
    assert boxes.shape[0] >= 1 and boxes.shape[1] == 4
    assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()


@pytest.fixture
def plain_data(tmp_path):
    """Six rows with no optional fields; rows 0 and 1 are near-duplicates (planted)."""
    d = tmp_path / "in"
    d.mkdir()
    colors = [(200, 30, 30), (202, 32, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    rows = []
    for i, c in enumerate(colors):
        img = Image.new("RGB", (32, 32), c)
        img.paste((255, 255, 255), (4 + i, 4, 12 + i, 12))
        img.save(d / f"{i}.png")
        rows.append({"id": f"p{i}", "image": f"{i}.png", "prompt": "Describe it.", "chosen": f"A dog on sofa {i}.",
                     "rejected": "zzz"})
    path = write_jsonl(d / "data.jsonl", rows)
    return path


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_napo_rows_get_model_answers(plain_data, tmp_path):
    before = digest(plain_data)
    assert build.run(["napo", "--data", plain_data, "--out", str(tmp_path / "a"), *FAST]) == 0
    assert build.run(["napo", "--data", plain_data, "--out", str(tmp_path / "b"), *FAST]) == 0
    a, b = read(tmp_path / "a" / "data.jsonl"), read(tmp_path / "b" / "data.jsonl")
    assert len(a) == 6 and a == b  # 3 beams, no sampling: the same answers every time
    assert all(r["lang_biased"] and r["vision_biased"] for r in a)
    assert all(os.path.isabs(r["image"]) for r in a)
    assert digest(plain_data) == before  # the input is never modified


class SpyProcessor:
    """The real processor, recording the prompt strings it is given and the image tokens it expands them to."""

    def __init__(self, processor):
        self.processor, self.texts, self.image_tokens = processor, [], []

    def __getattr__(self, name):
        return getattr(self.processor, name)

    def __call__(self, text, **kwargs):
        self.texts += text
        out = self.processor(text=text, **kwargs)
        image_id = self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        self.image_tokens += (out["input_ids"] == image_id).sum(1).tolist()
        return out


def napo_prompts(monkeypatch, data, out, model, *flags) -> SpyProcessor:
    """Run prepare napo on ``model`` (a tiny one) and return its processor, with what it was given."""
    spies = []

    def load(name, **kwargs):
        m, proc = tiny_model(name)
        spies.append(SpyProcessor(proc))
        return m, spies[-1]
    monkeypatch.setattr(models, "load_model", load)
    argv = ["napo", "--data", data, "--out", out, "--model", model, "--max-new-tokens", "2", "--num-beams", "1", *flags]
    assert build.run(argv) == 0
    return spies[0]


def test_napo_prompts_on_llava_15_are_the_released_conversation(plain_data, tmp_path, monkeypatch, capsys):
    """NaPO's released llava15_gen_bias_data.py builds LLaVA's llava_v1 conversation: its system
    prompt, sep " ", roles USER / ASSISTANT; the question alone (question_only), and "<image>\n"
    alone (image_only). Written out here from that template, character for character."""
    spy = napo_prompts(monkeypatch, plain_data, str(tmp_path / "n"), "tiny-llava", "--batch-size", "8")
    question_only = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                     "helpful, detailed, and polite answers to the human's questions. USER: Describe it. ASSISTANT:")
    image_only = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the human's questions. USER: <image>\n ASSISTANT:")
    assert spy.texts == [question_only] * 6 + [image_only] * 6
    assert spy.image_tokens == [0] * 6 + [16] * 6  # the LLaVA processor expands <image> to its 16 image tokens
    assert "  answers prompted in LLaVA's llava_v1 conversation (as released): 12" in capsys.readouterr().out
    # --napo-prompt chat-template: the processor's own template, as before
    spy = napo_prompts(monkeypatch, plain_data, str(tmp_path / "c"), "tiny-llava", "--napo-prompt", "chat-template")
    assert spy.texts == ["USER: Describe it.\nASSISTANT:"] * 6 + ["USER: <image>\n\nASSISTANT:"] * 6


def test_napo_prompts_on_other_families_keep_their_chat_template(plain_data, tmp_path, monkeypatch):
    spy = napo_prompts(monkeypatch, plain_data, str(tmp_path / "q"), "tiny-qwen2vl")
    assert spy.texts == ([chat_prompt(spy, "Describe it.", with_image=False)] * 6
                         + [chat_prompt(spy, "", with_image=True)] * 6)
    assert "A chat between" not in spy.texts[0]
    # LLaVA-1.5 is told apart by its config: a LLaVA on a Llama; same processor class or not
    from transformers import LlavaConfig
    llava = lambda text: types.SimpleNamespace(config=LlavaConfig(text_config={"model_type": text}))
    assert build.is_llava_15(llava("llama")) and build.is_llava_15(tiny_model("tiny-llava")[0])
    assert not build.is_llava_15(llava("mistral"))  # BakLLaVA
    assert not build.is_llava_15(llava("qwen2"))  # llava-interleave
    assert not build.is_llava_15(types.SimpleNamespace(config=types.SimpleNamespace(model_type="llava_next")))


def test_symmpo_neighbours_and_answers(plain_data, tmp_path):
    assert build.run(["symmpo", "--data", plain_data, "--out", str(tmp_path / "s"), *FAST]) == 0
    rows = {r["id"]: r for r in read(tmp_path / "s" / "data.jsonl")}
    for r in rows.values():
        assert os.path.realpath(r["contrast_image"]) != os.path.realpath(r["image"])  # never itself
        assert r["contrast_chosen"]
    assert rows["p0"]["contrast_image"].endswith("/1.png")  # the planted near-duplicate
    assert rows["p1"]["contrast_image"].endswith("/0.png")
    # the same with a separate image model (a CLIP) for retrieval
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, vocab_size=300),
                                vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16))
    clip.save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "clip")
    assert build.run(["symmpo", "--data", plain_data, "--out", str(tmp_path / "c"), "--embedder", str(tmp_path / "clip"),
                        *FAST]) == 0
    assert read(tmp_path / "c" / "data.jsonl")[0]["contrast_image"].endswith("/1.png")
    # a user's contrast answer is kept untouched; ablations build m' from m
    given = read(plain_data)
    given[0]["contrast_chosen"] = "Kept as written."
    for r in given:
        r["image"] = os.path.join(os.path.dirname(plain_data), r["image"])
    path = write_jsonl(tmp_path / "given.jsonl", given)
    assert build.run(["symmpo", "--data", path, "--out", str(tmp_path / "b"), "--contrast", "blank", *FAST]) == 0
    out = read(tmp_path / "b" / "data.jsonl")
    assert out[0]["contrast_chosen"] == "Kept as written."
    black = Image.open(tmp_path / "b" / out[1]["contrast_image"])
    assert black.getextrema() == ((0, 0), (0, 0), (0, 0))
    # --contrast noise bakes perturb.corrupt's noise into an 8-bit image, drawn from (seed, id)
    assert build.run(["symmpo", "--data", path, "--out", str(tmp_path / "n"), "--contrast", "noise", "--seed", "7",
                        *FAST]) == 0
    r = read(tmp_path / "n" / "data.jsonl")[1]
    g = torch.Generator().manual_seed(stable_seed(7, r["id"]))
    want = to_pil(perturb.corrupt(to_tensor(load_image(r["image"])), "noise", g, t=500))
    assert load_image(str(tmp_path / "n" / r["contrast_image"])).tobytes() == want.tobytes()


def test_mfpo_noises_key_regions(plain_data, tmp_path):
    det, det_proc = tiny_detector()
    seg, seg_proc = tiny_segmenter()
    for name, (m, p) in {"det": (det, det_proc), "seg": (seg, seg_proc)}.items():
        m.save_pretrained(tmp_path / name)
        p.save_pretrained(tmp_path / name)
    def run(out, threshold):
        assert build.run(["mfpo", "--data", plain_data, "--out", str(tmp_path / out), "--detector", str(tmp_path / "det"),
                            "--segmenter", str(tmp_path / "seg"), "--threshold", threshold, *FAST]) == 0
        return read(tmp_path / out / "data.jsonl")

    def mask(out, r):
        return torch.tensor(list(Image.open(tmp_path / out / r["noise_mask"]).tobytes()), dtype=torch.float).view(32, 32) / 255
    # a box is kept when its score is above the threshold, and scores never exceed 1: nothing is
    # found, every row falls back to noise on the whole image: a step and no mask; nothing is baked
    # into an 8-bit image (training noises the processed pixels)
    rows = run("none", "1.0")
    assert len(rows) == 6 and all(r["keywords"] == ["dog", "sofa"] and r["region"] == "global" for r in rows)
    assert all(r["noise_step"] == 500 and "noise_mask" not in r and "corrupt_image" not in r for r in rows)
    # threshold 0: the random detector finds boxes; the mask covers part of the image
    rows = run("all", "0.0")
    grounded = [r for r in rows if r["region"] == "grounded"]
    assert grounded
    for r in grounded:
        assert 0 < mask("all", r).mean() < 1 and set(mask("all", r).unique().tolist()) <= {0.0, 1.0}
    assert build.run(["mfpo", "--data", plain_data, "--out", str(tmp_path / "r"), "--regions", "random",
                        "--noise-step", "300", "--batch-size", "2"]) == 0  # no --model: keywords by position alone
    r0 = read(tmp_path / "r" / "data.jsonl")[0]
    assert r0["noise_step"] == 300
    assert 0.15 < mask("r", r0).mean().item() < 0.25  # a random 20% of the image


def test_generate_counts_the_tokens_it_generated():
    """Each answer's generated token count, end-of-sequence excluded: max_new_tokens when it was cut there."""
    model, proc = tiny_model("tiny-llava")
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0: greedy picks token 0, then 1 when 0 is barred
    img = Image.new("RGB", (32, 32), (10, 200, 10))
    texts, lengths = generate(model, proc, ["Q?", "Why?"], [img, img], max_new_tokens=4)
    assert lengths == [4, 4] and texts == ["\x00" * 4] * 2  # </s> never came
    model.generation_config.eos_token_id = 0  # now token 0 ends it; min_new_tokens=1 bars it at step 1
    texts, lengths = generate(model, proc, ["Q?", "Why?"], [img, img], max_new_tokens=4)
    assert lengths == [1, 1] and texts == ["\x01\x00"] * 2  # one token, then the one that ends it


def test_napo_records_truncated_generations(plain_data, tmp_path, capsys):
    assert build.run(["napo", "--data", plain_data, "--out", str(tmp_path / "n"), *FAST]) == 0
    rows = read(tmp_path / "n" / "data.jsonl")
    # a random tiny model never says </s> within 4 tokens: every answer is cut, and says so
    assert all(r["truncated"] == ["lang_biased", "vision_biased"] for r in rows)
    # the summary: one line per outcome, then where the rows are
    assert capsys.readouterr().out.splitlines() == [
        "tiny-llava (random, tiny): generating at most 4 tokens with 1 beam(s); the papers' 1024 and 3 are for real "
        "models (--max-new-tokens, --num-beams)",
        "prepare napo:",
        "  rows written: 6",
        "  rows already there: 0",
        "  answers prompted in LLaVA's llava_v1 conversation (as released): 12",
        "  lang_biased truncated at --max-new-tokens (no end-of-sequence added): 6",
        "  vision_biased truncated at --max-new-tokens (no end-of-sequence added): 6",
        f"  output: {tmp_path / 'n' / 'data.jsonl'}"]


def kill_after_first_chunk(monkeypatch, argv):
    """Run ``prepare argv`` and stop it as a kill would, after its first chunk (2 rows with
    --batch-size 2) is written: the method's pipeline raises on the second."""
    name = f"{argv[0]}_rows"  # napo -> build.napo_rows
    real, calls = getattr(build, name), []

    def die_on_second_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(build, name, die_on_second_chunk)
    assert build.run(argv) == 130  # an interruption: one line, status 130, the finished chunk kept
    monkeypatch.setattr(build, name, real)


@pytest.mark.parametrize("method, extra", [
    ("napo", []),
    ("napo", ["--do-sample", "--temperature", "1.0", "--num-beams", "1"]),  # sampling too: each chunk is seeded
    ("mfpo", ["--regions", "random"]),
], ids=["napo", "napo-sampled", "mfpo"])
def test_killed_prepare_resumes_to_the_same_rows(plain_data, tmp_path, monkeypatch, method, extra):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert build.run([method, "--data", plain_data, "--out", straight, *FAST, *extra]) == 0
    kill_after_first_chunk(monkeypatch, [method, "--data", plain_data, "--out", killed, *FAST, *extra])
    with open(os.path.join(killed, "data.jsonl"), "a") as f:
        f.write('{"id": "p2", "ima')  # a row cut short by the kill
    assert len(read_ok(os.path.join(killed, "data.jsonl"))) == 2
    # mfpo makes each row on its own: its batch size is not a setting, and may change on resume
    other_batch = ["--batch-size", "3"] if method == "mfpo" else []
    assert build.run([method, "--data", plain_data, "--out", killed, *FAST, *extra, *other_batch]) == 0
    assert read(os.path.join(killed, "data.jsonl")) == read(os.path.join(straight, "data.jsonl"))
    if method == "mfpo":
        for r in read(os.path.join(straight, "data.jsonl")):
            assert digest(os.path.join(straight, r["noise_mask"])) == digest(os.path.join(killed, r["noise_mask"]))


def test_resume_with_other_settings_is_refused(plain_data, tmp_path, monkeypatch, capsys):
    """Rows made with --lang-image none must not be continued with --lang-image white."""
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    white = ["napo", "--data", plain_data, *FAST, "--lang-image", "white"]
    assert build.run([*white, "--out", straight]) == 0
    kill_after_first_chunk(monkeypatch, ["napo", "--data", plain_data, "--out", killed, *FAST])
    settings = json.load(open(os.path.join(killed, "prepare.json")))
    # what decides the rows; generation pads each batch, so the batch size is one of them
    assert {k: v for k, v in settings.items() if k != "data_sha256"} == {
        "method": "napo", "model": "tiny-llava", "seed": 0, "max_new_tokens": 4, "num_beams": 1, "do_sample": False,
        "batch_size": 2, "napo_prompt": "released", "lang_image": "none"}
    assert settings["data_sha256"] == digest(plain_data)
    with open(os.path.join(killed, "data.jsonl"), "a") as f:
        f.write('{"id": "p2", "ima')  # a row cut short by the kill
    before = digest(os.path.join(killed, "data.jsonl"))
    monkeypatch.setattr(models, "load_model", None)  # refused before any model loads
    capsys.readouterr()
    assert build.run([*white, "--out", killed, "--num-beams", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {killed}/data.jsonl holds 2 rows made with other settings: --num-beams 1 (now 2); --lang-image none "
        f"(now white). Run with the old settings to continue, or use another --out, or add --overwrite to start "
        f"afresh (it deletes {killed}/data.jsonl, {killed}/images/ and {killed}/prepare.json)"]
    assert digest(os.path.join(killed, "data.jsonl")) == before  # untouched, even the half-written line
    monkeypatch.undo()
    assert build.run([*white, "--out", killed, "--overwrite"]) == 0
    assert read(os.path.join(killed, "data.jsonl")) == read(os.path.join(straight, "data.jsonl"))
    assert json.load(open(os.path.join(killed, "prepare.json")))["lang_image"] == "white"


def test_rows_without_recorded_settings_are_refused(plain_data, tmp_path, capsys):
    """OUT/data.jsonl from an older version has no prepare.json: its settings cannot be checked."""
    out = tmp_path / "old"
    out.mkdir()
    write_jsonl(out / "data.jsonl", [{"id": "p0", "image": "/x.png", "prompt": "Q", "chosen": "a", "rejected": "b"}])
    assert build.run(["napo", "--data", plain_data, "--out", str(out), *FAST]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {out}/data.jsonl holds 1 row but no prepare.json is beside it (an older version, or "
        f"something else, wrote it): its rows cannot be checked against this run's settings: use another --out, or "
        f"add --overwrite to start afresh (it deletes {out}/data.jsonl, {out}/images/ and {out}/prepare.json)"]
    assert not (out / "prepare.json").exists()


def read_ok(path):
    out = []
    for line in open(path):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_bad_rows_are_one_line_errors(tmp_path, image_dir, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "img/0.png", "prompt": "Q", "chosen": "a"}, "{bad"])
    assert build.run(["napo", "--data", path, "--out", str(tmp_path / "o"), "--model", "tiny-llava"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}:1: field 'rejected': missing", f"error: {path}:2: invalid JSON (Expecting property name enclosed in double quotes, column 2)"]


def test_napo_needs_a_model(plain_data, tmp_path, capsys):
    assert build.run(["napo", "--data", plain_data, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "error: napo needs --model: the base model whose answers it records"


def test_a_run_that_writes_no_row_is_an_error(plain_data, tmp_path, monkeypatch, capsys):
    """Every answer empty (a random model can answer with whitespace only): not "done" with an
    empty data.jsonl, but one line saying why."""
    monkeypatch.setattr(build, "generate", lambda model, proc, prompts, images, **kw: ([""] * len(prompts),
                                                                                       [False] * len(prompts)))
    assert build.run(["napo", "--data", plain_data, "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith(f"error: no row written to {tmp_path / 'o' / 'data.jsonl'}: every one of the 6 rows was skipped")


def test_mfpo_rows_of_an_earlier_keyphrase_ranking_are_not_continued(plain_data, tmp_path, capsys):
    """prepare.json records the keyphrase ranking's version with mfpo's rows: rows ranked by an
    earlier one (a record without it) are refused, never mixed with this one's."""
    out = str(tmp_path / "out")
    args = ["mfpo", "--data", plain_data, "--out", out, "--regions", "global"]
    assert build.run(args) == 0
    record = os.path.join(out, "prepare.json")
    settings = json.load(open(record))
    assert settings["keyphrases"] == 2
    del settings["keyphrases"]
    json.dump(settings, open(record, "w"))
    capsys.readouterr()
    assert build.run(args) == 2
    assert "made with other settings: mmpo's keyphrase ranking not used (now 2)" in capsys.readouterr().err
