"""Reading, checking and tokenizing preference data."""
import gzip
import json
import math
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import ROOT, write_jsonl
from mmpo.data import PreferenceDataset, collate, processed_mask
from mmpo.images import load_image, to_pil, to_tensor
from mmpo.rows import DataError, read_rows, required_fields
from mmpo.tiny import tiny_llava_processor, tiny_model
from mmpo.perturb import alpha_bar


def test_every_problem_is_reported_with_file_line_and_field(tmp_path, image_dir):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = {"image": "img/0.png", "prompt": "Q?", "chosen": "yes", "rejected": "no"}
    path = write_jsonl(tmp_path / "d.jsonl", [
        good,
        '{"image": "img/0.png", "prompt": ',                 # 2: bad JSON
        {**good, "chosen": "  "},                            # 3: empty response
        {**good, "image": "img/missing.png"},                # 4: missing image
        {**good, "image": "broken.png"},                     # 5: corrupt image
        {k: v for k, v in good.items() if k != "rejected"},  # 6: missing field
        {**good, "id": "x"}, {**good, "id": "x"},            # 7, 8: duplicate id
        "[1, 2]",                                            # 9: not an object
    ])
    with pytest.raises(DataError) as e:
        read_rows(path, required_fields(("chosen", "rejected"), "crop"))
    msgs = e.value.messages
    assert len(msgs) == 7
    assert msgs[0].startswith(f"{path}:2: invalid JSON")
    assert msgs[1] == f"{path}:3: field 'chosen': must be a non-empty string"
    assert msgs[2].startswith(f"{path}:4: field 'image': image file not found:") and msgs[2].endswith("missing.png")
    assert msgs[3].startswith(f"{path}:5: field 'image': cannot decode image")
    assert msgs[4] == f"{path}:6: field 'rejected': missing"
    assert msgs[5] == f"{path}:8: field 'id': duplicate id 'x' (first on line 7)"
    assert msgs[6] == f"{path}:9: expected a JSON object, got list"
    assert all("\n" not in m for m in msgs)


def test_objective_decides_required_fields(tmp_path, image_dir):
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "img/0.png", "question": "Q?", "chosen": "a", "rejected": "b"}])
    rows = read_rows(path, required_fields(("chosen", "rejected", "chosen_on_corrupt"), "crop"))
    assert rows[0]["prompt"] == "Q?" and rows[0]["id"] == "1"  # question is an alias; id defaults to the line
    with pytest.raises(DataError, match="field 'contrast_chosen': missing"):
        read_rows(path, required_fields(("chosen", "contrast_on_image", "contrast_on_corrupt"), "contrast"))
    with pytest.raises(DataError, match="field 'lang_biased': missing"):
        read_rows(path, required_fields(("chosen", "lang_biased"), "crop"))


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16", "LA", "1"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / f"x.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    img = Image.new("RGB", (8, 8), (200, 100, 50)).convert(mode) if mode != "I;16" else Image.new("I;16", (8, 8), 40000)
    img.save(path)
    out = load_image(str(path))
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode == "I;16":
        assert out.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 256: scaled, not clipped to white


def test_pixels_cross_between_pil_and_torch_unchanged():
    """images.to_tensor and images.to_pil, the one place pixels cross: an 8-bit image comes back byte for
    byte; floats are clamped to [0, 1] and rounded to the nearest level; an (H, W) mask is grayscale."""
    img = Image.frombytes("RGB", (7, 5), bytes(range(105)))
    x = to_tensor(img)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32 and x[0, 0, 1].item() == pytest.approx(3 / 255)
    assert to_pil(x).tobytes() == img.tobytes()
    mask = to_pil(torch.tensor([[-0.5, 0.25, 2.0]]))
    assert mask.mode == "L" and mask.size == (3, 1) and list(mask.tobytes()) == [0, 64, 255]  # 0.25 * 255 = 63.75
    with pytest.raises(ValueError, match="expected an RGB image, got mode L"):
        to_tensor(mask)


def m_prime_pixels(ds, item):
    """The processed pixel tensor of an example's m'."""
    return ds[item].image_inputs[1]["pixel_values"]


@pytest.mark.parametrize("kind", ["crop", "noise"])
def test_corrupt_image_is_the_same_every_time(synthetic, kind):
    _, proc = tiny_model("tiny-llava")
    views = ("chosen", "rejected", "chosen_on_corrupt")
    a = PreferenceDataset(synthetic, proc, views, m_prime=kind, seed=3)
    b = PreferenceDataset(synthetic, proc, views, m_prime=kind, seed=3)
    c = PreferenceDataset(synthetic, proc, views, m_prime=kind, seed=4)
    m, m_prime = a[0].image_inputs[0]["pixel_values"], m_prime_pixels(a, 0)
    assert not torch.equal(m, m_prime)
    assert torch.equal(m_prime_pixels(b, 0), m_prime)  # policy, reference, every epoch
    assert torch.equal(m_prime_pixels(a, (0, 5)), m_prime)  # one m' for the whole run by default
    assert not torch.equal(m_prime_pixels(c, 0), m_prime)  # another run seed, another m'
    assert not torch.equal(m_prime_pixels(a, 1), m_prime_pixels(a, 0))
    # --redraw-m-prime: a new m' each epoch, the same one within an epoch
    r = PreferenceDataset(synthetic, proc, views, m_prime=kind, seed=3, redraw=True)
    assert torch.equal(m_prime_pixels(r, (0, 1)), m_prime_pixels(r, (0, 1)))
    assert not torch.equal(m_prime_pixels(r, (0, 1)), m_prime_pixels(r, (0, 2)))


def test_responses_truncated_prompts_never_and_overlong_prompt_skipped(tmp_path, image_dir):
    _, proc = tiny_model("tiny-llava")
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"image": "img/0.png", "prompt": "Q?", "chosen": "x" * 100, "rejected": "short"},
        {"image": "img/1.png", "prompt": "P" * 80, "chosen": "a", "rejected": "b"},
    ])
    ds = PreferenceDataset(path, proc, ("chosen", "rejected"), max_length=60)
    ex = ds[0]
    prompt_len = len(ex.prompt_ids[0])  # 16 image tokens + template + "Q?"
    assert prompt_len < 60
    assert len(ex.responses["chosen"]) == 60 - prompt_len  # cut to the budget
    assert len(ex.responses["rejected"]) == len("short") + 1  # + eos
    skipped = ds[1]
    assert skipped.skip and f"{path}:2:" in skipped.skip and "max_length is 60" in skipped.skip
    batch = collate([ex, skipped], ("chosen", "rejected"), proc.tokenizer.pad_token_id)
    assert batch.ids == ["1"] and batch.skipped == [skipped.skip] and batch.input_ids.shape[0] == 2


def test_sft_rows_may_be_text_only_or_image_only(tmp_path, image_dir):
    """LLaVA-1.5's SFT data: image + question, text only (no image), and image only (empty prompt)."""
    _, proc = tiny_model("tiny-llava")
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "i", "image": "img/0.png", "prompt": "Q?", "chosen": "Red."},
        {"id": "t", "prompt": "What color is the circle?", "chosen": "The circle is red."},
        {"id": "o", "image": "img/1.png", "prompt": "", "chosen": "A green picture."},
    ])
    ds = PreferenceDataset(path, proc, ("chosen",))
    tok = proc.tokenizer
    text, image = ds[1], ds[2]
    assert text.image_inputs == [] and tok.convert_tokens_to_ids("<image>") not in text.prompt_ids[0].tolist()
    assert tok.decode(text.prompt_ids[0]) == "USER: What color is the circle?\nASSISTANT:"
    assert tok.decode(image.prompt_ids[0]) == "USER: " + "<image>" * 16 + "\n\nASSISTANT:"  # the image alone
    batch = collate([ds[0], text, image], ("chosen",), tok.pad_token_id)
    assert batch.image_index.tolist() == [0, -1, 1] and len(batch.images) == 2  # -1: no image
    # every other objective needs the image, and a prompt (first: DPO's 'rejected' is missing everywhere)
    assert problems(path)[1:] == [f"{path}:2: field 'image': missing",
                                  f"{path}:3: field 'prompt': must be a non-empty string"]
    # an SFT row needs an image or a prompt
    empty = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "", "chosen": "?"}])
    assert problems(empty, required_fields(("chosen",), "crop")) == \
        [f"{empty}:1: field 'prompt': must be a non-empty string"]


def test_synthetic_data_needs_the_image(synthetic):
    rows = read_rows(synthetic, required_fields(("chosen", "rejected", "contrast_on_image", "lang_biased"), "contrast"))
    chosen = {r["chosen"] for r in rows}
    rejected = {r["rejected"] for r in rows}
    # the same sentences are chosen for some images and rejected for others
    assert len(chosen & rejected) >= 3
    assert all(r["chosen"] != r["rejected"] for r in rows)
    # the square's color in the image is the chosen answer
    r = rows[0]
    img = load_image(r["image"])
    colors = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220),
              "yellow": (230, 210, 20), "purple": (140, 40, 170), "white": (245, 245, 245)}
    word = r["chosen"].split()[-1].rstrip(".")
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(-1, 3)
    assert (pixels == torch.tensor(colors[word], dtype=torch.uint8)).all(1).sum() >= (32 // 3) ** 2


def random_image(path, w, h, seed=0):
    g = torch.Generator().manual_seed(seed)
    Image.frombytes("RGB", (w, h), torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy().tobytes()).save(path)
    return str(path)


def test_noise_strength_is_vcds_at_every_image_size(tmp_path):
    """VCD adds the noise to the normalized pixel tensor after the processor's resize, so at
    t = 500 the residual m' - sqrt(abar) m has std sqrt(1 - abar_500) = 0.505 for every image
    size (noise on the raw image before a downscale would shrink with the image's size)."""
    proc = tiny_llava_processor(336, 14)  # LLaVA-1.5's CLIP processor
    sizes = [(336, 336), (640, 480), (1365, 1024)]
    rows = [{"id": str(k), "image": random_image(tmp_path / f"{k}.png", w, h, k), "prompt": "Q?", "chosen": "a",
             "rejected": "b"} for k, (w, h) in enumerate(sizes)]
    ds = PreferenceDataset(write_jsonl(tmp_path / "d.jsonl", rows), proc, ("chosen", "chosen_on_corrupt"),
                           m_prime="noise")
    ab = alpha_bar()[500].item()
    assert math.sqrt(1 - ab) == pytest.approx(0.505, abs=5e-4)
    for k in range(len(sizes)):
        ex = ds[k]
        m, m_prime = ex.image_inputs[0]["pixel_values"], ex.image_inputs[1]["pixel_values"]
        assert m.shape == m_prime.shape == (1, 3, 336, 336)
        residual = m_prime - math.sqrt(ab) * m
        assert residual.std().item() == pytest.approx(0.505, abs=0.02)
        assert residual.mean().item() == pytest.approx(0.0, abs=0.02)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2vl", "tiny-idefics3"])
def test_region_noise_follows_the_mask_through_the_processor(tmp_path, name):
    """MFPO's region noise as prepare mfpo records it (noise_mask + noise_step): the mask goes
    through the model's own processor, so pixels outside it are untouched bit for bit in every
    layout (CLIP's centre crop, Qwen2-VL's flattened patches, Idefics3's tiles)."""
    _, proc = tiny_model(name)
    random_image(tmp_path / "m.png", 64, 32)  # wide: CLIP's centre crop keeps columns 16-48
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (0, 0, 32, 32))  # the left half
    mask.save(tmp_path / "mask.png")
    row = {"image": "m.png", "prompt": "Q?", "chosen": "a", "rejected": "b", "noise_mask": "mask.png", "noise_step": 999}
    ds = PreferenceDataset(write_jsonl(tmp_path / "d.jsonl", [row]), proc, ("chosen", "chosen_on_corrupt"),
                           m_prime="crop")  # a row's noise_mask wins over the on-the-fly m'
    ex = ds[0]
    m, m_prime = ex.image_inputs[0]["pixel_values"], ex.image_inputs[1]["pixel_values"]
    inside = processed_mask(proc.image_processor, Image.open(tmp_path / "mask.png"))["pixel_values"]
    assert inside.shape == m.shape
    assert torch.equal(m_prime[inside == 0], m[inside == 0])
    full = inside == 1
    assert (m_prime[full] - m[full]).abs().mean() > 0.5  # t = 999: almost pure noise
    assert 0.2 < inside.mean().item() < 0.8  # about half of what the model sees, whatever the layout
    if name == "tiny-llava":  # resized to 64x32, centre-cropped to columns 16-48: the left 16 are masked
        assert inside[..., :, :15].min() == 1 and inside[..., :, 17:].max() == 0


def test_explicit_noise_step_must_match_the_data(tmp_path, image_dir):
    _, proc = tiny_model("tiny-llava")
    row = {"image": "img/0.png", "prompt": "Q?", "chosen": "a", "rejected": "b", "noise_step": 300}
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    views = ("chosen", "chosen_on_corrupt")
    assert PreferenceDataset(path, proc, views, m_prime="noise").m_prime_kind(read_rows(path, {"image"})[0]) == "region-noise"
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'noise_step': the data was made with t=300, --noise-step is 500"):
        PreferenceDataset(path, proc, views, m_prime="noise", noise_step=500)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**row, "noise_step": 1000}, {**row, "truncated": ["nope"]}])
    with pytest.raises(DataError) as e:
        read_rows(bad, {"image"})
    assert e.value.messages[0].endswith("field 'noise_step': must be a whole number in [0, 1000), got 1000")
    assert e.value.messages[1].startswith(f"{bad}:2: field 'truncated': must be a list of response field names")


def test_truncated_generations_get_no_end_of_sequence(tmp_path, image_dir):
    _, proc = tiny_model("tiny-llava")
    eos = proc.tokenizer.eos_token_id
    row = {"image": "img/0.png", "prompt": "Q?", "chosen": "abc", "rejected": "de", "lang_biased": "cut mid",
           "truncated": ["lang_biased"]}
    ds = PreferenceDataset(write_jsonl(tmp_path / "d.jsonl", [row]), proc, ("chosen", "rejected", "lang_biased"))
    ex = ds[0]
    assert ex.responses["chosen"].tolist() == [ord(c) for c in "abc"] + [eos]
    assert ex.responses["lang_biased"].tolist() == [ord(c) for c in "cut mid"]  # stopped at the limit: no eos


# ---- what a user with a bad data file sees: one clear line per problem ----------------------

GOOD = {"image": "img/0.png", "prompt": "Q?", "chosen": "yes", "rejected": "no"}
DPO = required_fields(("chosen", "rejected"), "crop")


def problems(path, required=DPO):
    """The messages read_rows raises for a file (it must raise)."""
    with pytest.raises(DataError) as e:
        read_rows(str(path), required)
    return e.value.messages


def test_a_line_that_is_not_utf8_is_reported_and_the_other_lines_still_checked(tmp_path, image_dir):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps(GOOD).encode(),
        b'{"prompt": "caf\xe9"}',                    # 2: Latin-1 e-acute
        json.dumps({**GOOD, "rejected": ""}).encode(),  # 3: still checked
        '{"prompt": "\u00e9t'.encode() + b'\xff"}',  # 4: after a real two-byte e-acute
    ]) + b"\n")
    assert problems(path) == [
        f"{path}:2: not UTF-8 text (byte 0xE9 at column 16)",
        f"{path}:3: field 'rejected': must be a non-empty string",
        f"{path}:4: not UTF-8 text (byte 0xFF at column 15)",  # columns count characters, not bytes
    ]


def test_the_programs_print_undecodable_lines_without_a_traceback(tmp_path, image_dir):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"prompt": "caf\xe9"}\n')
    r = subprocess.run([sys.executable, "-m", "mmpo.prepare", "mfpo", "--data", str(path), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {path}:2: not UTF-8 text (byte 0xE9 at column 16)"]
    assert not (tmp_path / "o").exists()  # nothing is written for bad data


def test_a_byte_order_mark_is_ignored_at_the_start_and_where_files_were_joined(tmp_path, image_dir):
    path = tmp_path / "d.jsonl"
    bom = b"\xef\xbb\xbf"  # what Windows editors write in front of UTF-8 text
    path.write_bytes(bom + json.dumps(GOOD).encode() + b"\r\n" + bom + json.dumps({**GOOD, "id": "b"}).encode() + b"\r\n")
    rows = read_rows(str(path), DPO)
    assert [r["id"] for r in rows] == ["1", "b"] and rows[0]["prompt"] == "Q?"


def test_data_path_that_is_a_folder_or_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    assert problems(tmp_path / "empty") == [f"{tmp_path / 'empty'}: is a folder, expected a JSONL file"]
    # prepare writes OUT/data.jsonl: a user who passes OUT is shown the file
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "data.jsonl").write_text("")
    assert problems(tmp_path / "prepared") == [
        f"{tmp_path / 'prepared'}: is a folder, expected a JSONL file (did you mean {tmp_path / 'prepared' / 'data.jsonl'}?)"]
    assert problems(tmp_path / "nope.jsonl") == [f"{tmp_path / 'nope.jsonl'}: no such file"]


@pytest.mark.parametrize("content,message", [
    (b"", "empty file, expected one JSON object per line"),
    (b"\xef\xbb\xbf", "empty file, expected one JSON object per line"),  # a BOM and nothing else
    (b"\n  \n\r\n\t\n", "only blank lines, expected one JSON object per line"),
    (json.dumps(GOOD).encode("utf-16"), "UTF-16 text, expected UTF-8 (save the file as UTF-8)"),  # Notepad's "Unicode"
    (gzip.compress(json.dumps(GOOD).encode()), "gzip-compressed, expected JSONL text (decompress it with gunzip first)"),
    (json.dumps([GOOD, GOOD], indent=2).encode(), "a JSON array, expected JSON Lines (one JSON object per line)"),
    (json.dumps(GOOD, indent=1).encode(), "one JSON object over 6 lines, expected JSON Lines (one JSON object per line)"),
])
def test_a_file_that_is_no_jsonl_at_all_is_one_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    assert problems(path) == [f"{path}: {message}"]


def test_an_image_path_that_is_a_folder(tmp_path, image_dir):
    path = write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "image": "img"}])
    assert problems(path) == [f"{path}:1: field 'image': is a folder, not an image file: {image_dir}"]


def test_an_image_path_written_from_the_current_folder_gets_a_hint(tmp_path, image_dir, monkeypatch):
    (tmp_path / "data").mkdir()
    path = write_jsonl(tmp_path / "data" / "d.jsonl", [GOOD])
    monkeypatch.chdir(tmp_path)  # img/0.png is here, not beside the data file
    assert problems(path) == [f"{path}:1: field 'image': image file not found: {tmp_path / 'data' / 'img' / '0.png'}"
                              " (relative paths start at the data file's folder)"]


def test_a_generated_field_missing_everywhere_is_one_line_with_the_command_that_makes_it(tmp_path, image_dir):
    rows = [GOOD] * 7 + [{**GOOD, "lang_biased": "a", "vision_biased": "b"}]
    rows[3] = {k: v for k, v in GOOD.items() if k != "rejected"}  # missing on one row only
    path = write_jsonl(tmp_path / "d.jsonl", [{**r, "id": str(i)} for i, r in enumerate(rows)])
    napo = f"make it with python -m mmpo.prepare napo --data {path} --out DIR --model M"
    assert problems(path, required_fields(("chosen", "rejected", "lang_biased", "vision_biased"), "crop")) == [
        f"{path}: field 'lang_biased': missing on 7 of 8 rows (lines 1, 2, 3, 4, 5, ...); {napo}",
        f"{path}: field 'vision_biased': missing on 7 of 8 rows (lines 1, 2, 3, 4, 5, ...); {napo}",
        f"{path}:4: field 'rejected': missing",  # once: the line as before
    ]


def test_symmpo_fields_and_plain_fields_missing_on_several_rows(tmp_path, image_dir):
    no_prompt = {k: v for k, v in GOOD.items() if k != "prompt"}
    path = write_jsonl(tmp_path / "d.jsonl", ["{oops", no_prompt, no_prompt])
    symmpo = f"make it with python -m mmpo.prepare symmpo --data {path} --out DIR --model M"
    assert problems(path, required_fields(("chosen", "contrast_on_image", "contrast_on_corrupt"), "contrast")) == [
        f"{path}:1: invalid JSON (Expecting property name enclosed in double quotes, column 2)",
        f"{path}: field 'contrast_chosen': missing on 2 of 2 rows (lines 2, 3); {symmpo}",
        f"{path}: field 'contrast_image': missing on 2 of 2 rows (lines 2, 3); {symmpo}",
        f"{path}: field 'prompt': missing on 2 of 2 rows (lines 2, 3)",  # written by people: no command
    ]


def test_ids_may_be_numbers_but_not_lists_or_booleans(tmp_path, image_dir):
    path = write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "id": 7}, {**GOOD, "id": "x"}, {**GOOD, "id": None}])
    assert [r["id"] for r in read_rows(path, DPO)] == ["7", "x", "3"]  # null: the line number, as when absent
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**GOOD, "id": 7}, {**GOOD, "id": "7"}, {**GOOD, "id": [1, 2]},
                                               {**GOOD, "id": True}, {**GOOD, "id": ""}, {**GOOD, "id": 2.5}])
    assert problems(bad) == [
        f"{bad}:2: field 'id': duplicate id '7' (first on line 1)",  # 7 and "7" name the same example
        f"{bad}:3: field 'id': must be a non-empty string or a whole number, got [1, 2]",
        f"{bad}:4: field 'id': must be a non-empty string or a whole number, got true",
        f"{bad}:5: field 'id': must be a non-empty string or a whole number, got \"\"",
        f"{bad}:6: field 'id': must be a non-empty string or a whole number, got 2.5",
    ]


def test_wrong_types_are_shown_as_written(tmp_path, image_dir):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        json.dumps({**GOOD, "difficulty": 3}),                    # fine
        json.dumps({**GOOD, "difficulty": True}),                 # JSON's true is no number
        json.dumps({**GOOD, "difficulty": "0.5"}),
        '{"image": "img/0.png", "prompt": "Q?", "chosen": "yes", "rejected": "no", "difficulty": NaN}',
        json.dumps({**GOOD, "chosen": ["yes", "indeed"], "noise_step": True}),
        json.dumps({**GOOD, "rejected": {"text": "no, it is not: " + "really " * 10}}),
    ]) + "\n")
    assert problems(path) == [
        f"{path}:2: field 'difficulty': must be a number, got true",
        f"{path}:3: field 'difficulty': must be a number, got \"0.5\"",
        f"{path}:4: field 'difficulty': must be a finite number, got NaN",
        f"{path}:5: field 'chosen': must be a non-empty string, got [\"yes\", \"indeed\"]",
        f"{path}:5: field 'noise_step': must be a whole number in [0, 1000), got true",  # every problem of a row
        # a long value is cut to 40 characters
        f"{path}:6: field 'rejected': must be a non-empty string, got {{\"text\": \"no, it is not: really reall...",
    ]
