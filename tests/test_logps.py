"""The fused multi-view scorer against the plainest possible computation: one HF forward per
view, unpadded, summing log_softmax at the response tokens; and prefix sharing (each image +
prompt run once for all its views) against scoring every view as a full sequence."""
import pytest
import torch
import torch.nn.functional as F

from conftest import write_jsonl
from mmpo.data import PreferenceDataset, collate
from mmpo import logps as L
from mmpo.bench.measure import lm_positions
from mmpo.logps import encode_images, sequence_logps
from mmpo.tiny import tiny_model

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


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2vl", "tiny-idefics3"])
def test_fused_equals_separate_forwards(name, varied, share_prefix):
    model, proc = tiny_model(name)
    model.eval()
    ds = PreferenceDataset(varied, proc, ALL_VIEWS, m_prime="contrast")
    batch = collate([ds[0], ds[1]], ALL_VIEWS, proc.tokenizer.pad_token_id)
    # the prompts differ in length and so do the responses: both paddings are exercised
    assert (batch.attention_mask[:, 0] == 0).any() and (batch.attention_mask[:, -1] == 0).any()
    with torch.no_grad():
        fused, lengths = sequence_logps(model, batch, share_prefix=share_prefix)
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
        sequence_logps(model, batch, share_prefix=False, chunk=0)
        sequence_logps(model, batch, chunk=0)  # shared: 2 packed sequences (one per image), 2 responses each
    R, V = batch.response_mask.shape[1], model.config.text_config.vocab_size
    assert shapes == [(4, R, V), (2, 2 * R, V)]
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


# ---- SFT rows without an image or without a prompt --------------------------------------------

@pytest.fixture
def sft_kinds(tmp_path, image_dir):
    """LLaVA-1.5's three kinds of SFT rows: image + question, text only, image only (empty prompt)."""
    return write_jsonl(tmp_path / "sft.jsonl", [
        {"id": "i0", "image": "img/0.png", "prompt": "What color?", "chosen": "Red."},
        {"id": "t0", "prompt": "What color is the circle?", "chosen": "The circle is red."},
        {"id": "o0", "image": "img/1.png", "prompt": "", "chosen": "A green picture, all of it."},
        {"id": "t1", "prompt": "Hi", "chosen": "Hello there, how can I help?"},
        {"id": "i1", "image": "img/2.png", "prompt": "And this one, in a few words?", "chosen": "Blue."},
    ])


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2vl", "tiny-idefics3"])
def test_a_mixed_sft_batch_scores_each_row_as_alone(name, sft_kinds, share_prefix):
    """Rows with and without images in one batch: each row's log-prob is the one it has in a
    batch of its own, with the image features computed inside or handed in (as train.py does)."""
    model, proc = tiny_model(name)
    model.eval()
    ds = PreferenceDataset(sft_kinds, proc, ("chosen",))
    pad = proc.tokenizer.pad_token_id
    batch = collate([ds[i] for i in range(len(ds))], ("chosen",), pad)
    assert batch.image_index.tolist() == [0, -1, 1, -1, 2]
    with torch.no_grad():
        mixed = sequence_logps(model, batch, share_prefix=share_prefix)[0]
        handed = sequence_logps(model, batch, encode_images(model, batch), share_prefix=share_prefix)[0]
        alone = torch.cat([sequence_logps(model, collate([ds[i]], ("chosen",), pad), share_prefix=share_prefix)[0]
                           for i in range(len(ds))])
        # a batch of text-only rows has no image at all: nothing to encode
        text = collate([ds[1], ds[3]], ("chosen",), pad)
        assert text.images == [] and encode_images(model, text) == []
        text_only = sequence_logps(model, text, encode_images(model, text), share_prefix=share_prefix)[0]
    torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(handed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(text_only, alone[[1, 3]], rtol=1e-5, atol=1e-5)


def test_a_text_only_row_is_the_language_model_on_the_chat_prompt(sft_kinds):
    """The text-only row's summed log-prob, computed here from nothing but the tokenizer, the
    decoder and the output layer: the chat template's user turn with no image, then the answer
    and end of sequence."""
    from mmpo.models import language_model
    model, proc = tiny_model("tiny-llava")
    model.eval()
    ds = PreferenceDataset(sft_kinds, proc, ("chosen",))
    batch = collate([ds[i] for i in range(len(ds))], ("chosen",), proc.tokenizer.pad_token_id)
    tok = proc.tokenizer
    prompt = tok("USER: What color is the circle?\nASSISTANT:")["input_ids"]
    answer = tok("The circle is red.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt + answer])  # (1, T)
    with torch.no_grad():
        got = sequence_logps(model, batch)[0][1]  # row 1: "t0"
        logits = model.get_output_embeddings()(language_model(model)(input_ids=ids).last_hidden_state)[0]  # (T, V)
    logp = F.log_softmax(logits[len(prompt) - 1:-1], dim=-1)  # the positions that predict the answer
    want = logp.gather(1, torch.tensor(answer)[:, None]).sum()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---- prefix sharing --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2vl", "tiny-idefics3"])
def test_prefix_sharing_gives_the_same_logps_and_gradients(name, varied):
    """Every view of two examples of different prompt and answer lengths (left and right padding):
    the same log-probs and the same gradient of every weight, shared or not."""
    model, proc = tiny_model(name)
    model.eval()
    ds = PreferenceDataset(varied, proc, ALL_VIEWS, m_prime="contrast")
    batch = collate([ds[0], ds[1]], ALL_VIEWS, proc.tokenizer.pad_token_id)
    out = {}
    for share in (False, True):
        model.zero_grad()
        logps, _ = sequence_logps(model, batch, share_prefix=share)
        (logps * torch.arange(1.0, len(logps) + 1)).sum().backward()  # a different weight per row
        out[share] = logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
    assert out[True][1].keys() == out[False][1].keys()
    scale = max(g.abs().max().item() for g in out[False][1].values())  # a key bias's gradient is ~0: noise
    for n, g in out[False][1].items():
        torch.testing.assert_close(out[True][1][n], g, rtol=1e-4, atol=1e-6 * scale, msg=n)


def test_a_dpo_step_processes_p_plus_2r_positions_per_example(synthetic):
    """Counted at the language model's input embeddings: the policy and the LoRA reference
    (adapters off) each run P + 2R positions per example shared, 2(P + R) unshared."""
    from mmpo import lora
    from mmpo.reference import Reference
    model, proc = tiny_model("tiny-llava")
    lora.add_lora(model, r=4, alpha=8, dropout=0.0)
    ds = PreferenceDataset(synthetic, proc, ("chosen", "rejected"))
    batch = collate([ds[i] for i in range(3)], ("chosen", "rejected"), proc.tokenizer.pad_token_id)
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    for share in (True, False):
        seen.clear()
        features = encode_images(model, batch)
        sequence_logps(model, batch, features, share_prefix=share)[0].sum().backward()
        Reference(model, share_prefix=share).logps(batch, features)
        per_pass = 3 * (P + 2 * R) if share else 3 * 2 * (P + R)
        assert seen == [per_pass, per_pass] and lm_positions(batch, share) == per_pass


@pytest.mark.parametrize("views,m_prime,per_example", [
    (("chosen", "rejected", "chosen_on_corrupt"), "crop", (2, 3)),  # mDPO, MFPO: 2P + 3R, no filler block
    (("chosen", "rejected", "contrast_on_image", "chosen_on_corrupt", "contrast_on_corrupt"), "contrast", (2, 5)),  # SymMPO
])
def test_views_of_two_images_process_no_filler(synthetic, views, m_prime, per_example):
    """Counted at the language model's input embeddings: one forward per group size, together
    a P for each image and an R for each view, as ``lm_positions`` says; the log-probs those of
    the unshared forward."""
    model, proc = tiny_model("tiny-llava")
    model.eval()
    ds = PreferenceDataset(synthetic, proc, views, m_prime=m_prime)
    batch = collate([ds[i] for i in range(3)], views, proc.tokenizer.pad_token_id)
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    with torch.no_grad():
        shared = sequence_logps(model, batch, share_prefix=True)[0]
        assert sum(seen) == 3 * (per_example[0] * P + per_example[1] * R) == lm_positions(batch, True)
        torch.testing.assert_close(shared, sequence_logps(model, batch, share_prefix=False)[0], rtol=1e-5, atol=1e-5)


def test_block_mask_by_hand():
    """One packed sequence: a prefix of 3 columns (the first is padding) and 2 responses of 2."""
    mask = L.block_mask(torch.tensor([[0, 1, 1]]), k=2, R=2)[0, 0].int()
    want = torch.tensor([
        # keys: pad p1 p2 | a0 a1 | b0 b1      queries:
        [1, 0, 0, 0, 0, 0, 0],  # pad: only itself (never a row of -inf)
        [0, 1, 0, 0, 0, 0, 0],  # p1
        [0, 1, 1, 0, 0, 0, 0],  # p2
        [0, 1, 1, 1, 0, 0, 0],  # a0: the real prefix, then its own response causally
        [0, 1, 1, 1, 1, 0, 0],  # a1
        [0, 1, 1, 0, 0, 1, 0],  # b0: the prefix, never response a
        [0, 1, 1, 0, 0, 1, 1],  # b1
    ])
    assert torch.equal(mask, want)


def test_prefix_sharing_falls_back_with_one_warning_where_the_mask_cannot_reach(capsys):
    model, _ = tiny_model("tiny-llava")
    assert L.prefix_sharing_supported(model)  # sdpa
    model.config._attn_implementation = "flash_attention_2"
    assert not L.prefix_sharing_supported(model) and not L.prefix_sharing_supported(model)
    out = capsys.readouterr().out
    assert out.count("warning: prefix sharing needs sdpa or eager attention") == 1


def test_chunked_log_probs_are_exact_and_never_hold_more_than_a_chunk(varied, monkeypatch):
    """Log-probs of the targets, 7 positions' full-vocabulary logits at a time and recomputed in
    the backward pass, against all positions at once: equal values and gradients (shared or not),
    no log-softmax over more than 7 positions, and in the forward pass exactly the real response
    tokens projected: never a padding position, nor (shared) a filler block of a prefix with
    fewer views (here 4 views see the image and 3 the contrast image, so K = 4)."""
    model, proc = tiny_model("tiny-llava")
    ds = PreferenceDataset(varied, proc, ALL_VIEWS, m_prime="contrast")
    batch = collate([ds[0], ds[1]], ALL_VIEWS, proc.tokenizer.pad_token_id)
    rows = []
    real = L.F.log_softmax
    monkeypatch.setattr(L.F, "log_softmax", lambda x, dim: rows.append(x.numel() // x.shape[-1]) or real(x, dim=dim))
    out = {}
    for share, chunk in ((False, 0), (False, 7), (True, 7)):
        model.zero_grad()
        rows.clear()
        logps, _ = sequence_logps(model, batch, share_prefix=share, chunk=chunk)
        projected = sum(rows)
        logps.sum().backward()
        out[share, chunk] = logps.detach(), model.lm_head.weight.grad.clone(), max(rows), projected
    R, real = batch.response_mask.shape[1], int(batch.response_mask.sum())
    assert out[False, 0][2] == len(batch) * len(ALL_VIEWS) * R  # all at once: every response position
    assert real < len(batch) * len(ALL_VIEWS) * R  # (the fixture pads responses)
    for key in ((False, 7), (True, 7)):
        assert out[key][2] <= 7
        assert out[key][3] == real
        torch.testing.assert_close(out[key][0], out[False, 0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[key][1], out[False, 0][1], rtol=1e-4, atol=1e-5)  # summed in other orders


# ---- one owner per parameter: every scoring call takes the run's chunk and prefix sharing --------

def test_the_reference_and_the_held_out_evaluation_score_as_the_run_says(varied, tmp_path, monkeypatch):
    """The reference (live, and its cache) and the held-out evaluation take --logps-chunk and
    prefix sharing from the run, and their figures do not depend on them: chunk 7 or 0 (all at
    once), shared or not, give the same log-probs."""
    import copy

    from mmpo.training import report
    from mmpo.recipes import OBJECTIVES
    from mmpo.reference import Reference

    torch.manual_seed(0)
    model, processor = tiny_model("tiny-llava")
    model.eval()
    views = ("chosen", "rejected", "chosen_on_corrupt")
    ds = PreferenceDataset(varied, processor, views)
    batch = collate([ds[i] for i in range(len(ds))], views, processor.tokenizer.pad_token_id)
    frozen = copy.deepcopy(model).requires_grad_(False)
    seen = []
    real = L.sequence_logps

    def spy(m, b, features=None, share_prefix=True, chunk=256):
        seen.append((share_prefix, chunk))
        return real(m, b, features, share_prefix, chunk)
    import mmpo.reference as R
    monkeypatch.setattr(R, "sequence_logps", spy)
    monkeypatch.setattr(report, "sequence_logps", spy)
    figures = {}
    for share in (True, False):
        for chunk in (7, 0):
            seen.clear()
            ref = Reference(model, frozen, share_prefix=share, chunk=chunk)
            live = ref.logps(batch)
            cached = ref.cached(str(tmp_path / f"c{share}{chunk}.safetensors"), "fp", ds, 2,
                                processor.tokenizer.pad_token_id, torch.autocast("cpu", enabled=False)).logps(batch)
            held = report.evaluate(model, ds, ref.logps, OBJECTIVES["mdpo"], {"beta": 0.1}, 2,
                                   processor.tokenizer.pad_token_id, share_prefix=share, chunk=chunk)
            assert seen and set(seen) == {(share, chunk)}  # every call scored as the run said
            torch.testing.assert_close(cached, live.float(), atol=1e-5, rtol=0)
            figures[share, chunk] = (live, held)
    live0, held0 = figures[True, 0]
    for live, held in figures.values():
        torch.testing.assert_close(live, live0, atol=1e-4, rtol=0)
        assert held.keys() == held0.keys()
        for k in held0:
            assert held[k] == pytest.approx(held0[k], abs=1e-4), k


def test_a_damaged_reference_cache_is_rebuilt_not_a_crash(tmp_path):
    """A cache file that is not safetensors, or one cut short, reads as no cache (then rebuilt)."""
    from safetensors.torch import save_file

    from mmpo.reference import load_cache
    good = tmp_path / "good.safetensors"
    save_file({"logps": torch.zeros(1, 1)}, str(good), metadata={"fingerprint": "fp", "ids": '["a"]', "views": '["chosen"]'})
    assert load_cache(str(good), "fp") == {("a", "chosen"): 0.0}
    (tmp_path / "garbage").write_bytes(b"not a cache")
    (tmp_path / "cut").write_bytes(good.read_bytes()[:40])
    for name in ("garbage", "cut", "missing"):
        assert load_cache(str(tmp_path / name), "fp") is None, name
