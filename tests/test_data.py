"""Reading, checking and tokenizing preference data."""
import pytest
import torch
from PIL import Image

from conftest import write_jsonl
from mmpo.data import (DataError, PreferenceDataset, collate, epoch_order, load_image, read_rows,
                       required_fields)
from mmpo.models import tiny_model


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


def test_corrupt_image_is_the_same_every_time(synthetic):
    _, proc = tiny_model("tiny-llava")
    views = ("chosen", "rejected", "chosen_on_corrupt")
    for corruption in ("crop", "noise"):
        a = PreferenceDataset(synthetic, proc, views, corruption=corruption, seed=3)
        b = PreferenceDataset(synthetic, proc, views, corruption=corruption, seed=3)
        c = PreferenceDataset(synthetic, proc, views, corruption=corruption, seed=4)
        m, m_prime = a.images(a.rows[0])
        assert m.tobytes() != m_prime.tobytes()
        assert b.images(b.rows[0])[1].tobytes() == m_prime.tobytes()  # policy, reference, every epoch
        assert a.images(a.rows[0])[1].tobytes() == m_prime.tobytes()
        assert c.images(c.rows[0])[1].tobytes() != m_prime.tobytes()  # another run seed, another m'
        assert a.images(a.rows[1])[1].tobytes() != m_prime.tobytes()


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


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a = epoch_order(50, seed=1, epoch=0)
    assert sorted(a) == list(range(50))
    assert a == epoch_order(50, seed=1, epoch=0)
    assert a != epoch_order(50, seed=1, epoch=1) and a != epoch_order(50, seed=2, epoch=0)


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
