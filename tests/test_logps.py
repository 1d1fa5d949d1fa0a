"""The fused multi-view scorer against the plainest possible computation: one HF forward per
view, unpadded, summing log_softmax at the response tokens."""
import pytest
import torch
import torch.nn.functional as F

from conftest import write_jsonl
from mmpo.data import PreferenceDataset, collate
from mmpo.logps import encode_images, sequence_logps
from mmpo.models import tiny_model

ALL_VIEWS = ("chosen", "rejected", "chosen_on_corrupt", "contrast_on_image", "contrast_on_corrupt",
             "lang_biased", "vision_biased")


@pytest.fixture
def varied(tmp_path, image_dir):
    """Prompts and responses of very different lengths, so rows are padded on both sides."""
    rows = [
        {"id": "a", "image": "img/0.png", "prompt": "Hi?", "chosen": "Red.", "rejected": "A long wrong answer, going on.",
         "contrast_image": "img/1.png", "contrast_chosen": "Green, clearly green.", "lang_biased": "No", "vision_biased": "A square"},
        {"id": "b", "image": "img/2.png", "prompt": "What is the color of the whole picture, in one word please?",
         "chosen": "It is entirely blue, from one edge to the other.", "rejected": "Pink.",
         "contrast_image": "img/3.png", "contrast_chosen": "Yellow.", "lang_biased": "It is probably red, as usual",
         "vision_biased": "An image"},
    ]
    return write_jsonl(tmp_path / "d.jsonl", rows)


def separate_logps(model, batch):
    out = []
    for i in range(batch.input_ids.shape[0]):
        keep = batch.attention_mask[i].bool()
        ids = batch.input_ids[i][keep][None]  # (1, T) no padding at all
        extra = {k: v[i][keep][None] for k, v in batch.extra.items()}
        logits = model(input_ids=ids, **batch.images[batch.image_index[i]], **extra).logits[0].float()
        r = int(batch.response_mask[i].sum())
        T = ids.shape[1]
        logp = F.log_softmax(logits[T - r - 1:T - 1], dim=-1)  # positions predicting the response
        out.append(logp.gather(1, ids[0, T - r:, None]).sum())
    return torch.stack(out)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2vl", "tiny-idefics3"])
def test_fused_equals_separate_forwards(name, varied):
    model, proc = tiny_model(name)
    model.eval()
    ds = PreferenceDataset(varied, proc, ALL_VIEWS, m_prime="contrast")
    batch = collate([ds[0], ds[1]], ALL_VIEWS, proc.tokenizer.pad_token_id)
    # the prompts differ in length and so do the responses: both paddings are exercised
    assert (batch.attention_mask[:, 0] == 0).any() and (batch.attention_mask[:, -1] == 0).any()
    with torch.no_grad():
        fused, lengths = sequence_logps(model, batch)
        want = separate_logps(model, batch)
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=1e-5)
    assert lengths.tolist() == batch.response_mask.sum(1).tolist()


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2vl", "tiny-idefics3"])
def test_vision_tower_runs_once_per_distinct_image(name, synthetic):
    model, proc = tiny_model(name)
    model.eval()
    tower = next(getattr(model.model, n) for n in ("vision_tower", "visual", "vision_model") if hasattr(model.model, n))
    calls = []
    tower.register_forward_hook(lambda m, i, o: calls.append(1))
    ds = PreferenceDataset(synthetic, proc, ALL_VIEWS, m_prime="contrast")
    batch = collate([ds[i] for i in range(3)], ALL_VIEWS, proc.tokenizer.pad_token_id)
    assert len(batch.images) == 6 and batch.input_ids.shape[0] == 21  # 3 examples x (m, m') ; 7 views
    with torch.no_grad():
        fused = sequence_logps(model, batch)[0]
        assert len(calls) == 1  # one call of the tower for the 6 distinct images of 21 rows
        features = encode_images(model, batch)
        reused = sequence_logps(model, batch, features)[0]
        assert len(calls) == 2  # reusing features costs no further call
        plain = separate_logps(model, batch)
    assert torch.equal(fused, reused)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_labels_cover_exactly_the_response(varied):
    model, proc = tiny_model("tiny-llava")
    ds = PreferenceDataset(varied, proc, ("chosen", "rejected"))
    batch = collate([ds[0], ds[1]], ("chosen", "rejected"), proc.tokenizer.pad_token_id)
    P = batch.prompt_len
    texts = [proc.tokenizer.decode(batch.input_ids[i, P:][batch.response_mask[i]]) for i in range(4)]
    eos = proc.tokenizer.eos_token
    assert texts == ["Red." + eos, "It is entirely blue, from one edge to the other." + eos,
                     "A long wrong answer, going on." + eos, "Pink." + eos]
    # everything before the boundary is prompt (ending in the assistant's cue) or padding
    prompt = proc.tokenizer.decode(batch.input_ids[0, :P][batch.attention_mask[0, :P].bool()])
    assert prompt.endswith("Hi?\nASSISTANT:") and "<image>" in prompt


def test_logits_only_at_response_positions(synthetic):
    model, proc = tiny_model("tiny-llava")
    ds = PreferenceDataset(synthetic, proc, ("chosen", "rejected"))
    batch = collate([ds[0], ds[1]], ("chosen", "rejected"), proc.tokenizer.pad_token_id)
    shapes = []
    model.lm_head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        sequence_logps(model, batch)
    R = batch.response_mask.shape[1]
    assert shapes == [(4, R, model.config.text_config.vocab_size)]
    assert R < batch.prompt_len  # 16 image tokens + prompt are never projected to the vocabulary


def test_images_with_different_tile_counts_are_zero_padded():
    from mmpo.logps import _cat_images
    a = {"pixel_values": torch.ones(1, 2, 3, 4, 4), "pixel_attention_mask": torch.ones(1, 2, 4, 4, dtype=torch.bool)}
    b = {"pixel_values": torch.full((1, 5, 3, 4, 4), 2.0), "pixel_attention_mask": torch.ones(1, 5, 4, 4, dtype=torch.bool)}
    out = _cat_images([a, b])
    assert out["pixel_values"].shape == (2, 5, 3, 4, 4) and out["pixel_attention_mask"].dtype == torch.bool
    assert out["pixel_values"][0, :2].eq(1).all() and out["pixel_values"][0, 2:].eq(0).all()
    assert out["pixel_attention_mask"][0, 2:].sum() == 0 and out["pixel_values"][1].eq(2).all()
    same = _cat_images([{"x": torch.zeros(1, 3, 4, 4)}, {"x": torch.ones(1, 3, 4, 4)}])["x"]
    assert same.shape == (2, 3, 4, 4)  # equal shapes: a plain concatenation
