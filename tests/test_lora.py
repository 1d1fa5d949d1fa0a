"""LoRA: the adapters-off model is the base model; save/load and merge keep outputs; peft layout."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from mmpo import lora
from mmpo.data import PreferenceDataset, collate
from mmpo.logps import sequence_logps
from mmpo.tiny import tiny_model


@pytest.fixture
def batch_and_model(synthetic):
    model, proc = tiny_model("tiny-llava")
    ds = PreferenceDataset(synthetic, proc, ("chosen", "rejected"))
    return collate([ds[0], ds[1]], ("chosen", "rejected"), proc.tokenizer.pad_token_id), model


def perturb_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.05)


def test_disabled_adapters_give_the_base_model(batch_and_model):
    batch, model = batch_and_model
    model.eval()
    with torch.no_grad():
        base = sequence_logps(model, batch)[0]
        names = lora.add_lora(model, r=4, alpha=8, dropout=0.0)
        assert len(names) == 4 * 7  # q k v o gate up down in each of 4 layers
        assert torch.equal(sequence_logps(model, batch)[0], base)  # B = 0: a fresh adapter is a no-op
        perturb_adapters(model)
        trained = sequence_logps(model, batch)[0]
        with lora.as_reference(model):
            off = sequence_logps(model, batch)[0]
        again = sequence_logps(model, batch)[0]
    assert not torch.allclose(trained, base)
    assert torch.equal(off, base)
    assert torch.equal(again, trained)  # the context manager switches them back on


def test_only_adapters_train_and_only_in_the_language_model(batch_and_model):
    _, model = batch_and_model
    lora.add_lora(model, r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(n.startswith("model.language_model.") for n in trainable)


def test_save_load_roundtrip_and_peft_layout(batch_and_model, tmp_path):
    batch, model = batch_and_model
    model.eval()
    lora.add_lora(model, r=4, alpha=8, dropout=0.1)
    assert not any(layer.training for _, layer in lora.lora_layers(model))  # eval model: dropout off
    perturb_adapters(model)
    with torch.no_grad():
        want = sequence_logps(model, batch)[0]
    lora.save_adapter(model, str(tmp_path), base_model="some/base")
    cfg = json.load(open(tmp_path / "adapter_config.json"))
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["lora_dropout"] == 0.1
    assert cfg["base_model_name_or_path"] == "some/base" and cfg["bias"] == "none"
    assert "model.language_model.layers.0.self_attn.q_proj" in cfg["target_modules"]
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.language_model.layers.3.mlp.down_proj.lora_B.weight" in keys
    assert len(keys) == 2 * len(cfg["target_modules"])
    assert keys["base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 256)

    fresh, _ = tiny_model("tiny-llava")
    fresh.eval()
    lora.load_adapter(fresh, str(tmp_path))
    with torch.no_grad():
        assert torch.equal(sequence_logps(fresh, batch)[0], want)


def test_merge_gives_the_same_outputs_as_a_plain_model(batch_and_model, tmp_path):
    batch, model = batch_and_model
    model.eval()
    lora.add_lora(model, r=4, alpha=8, dropout=0.0)
    perturb_adapters(model)
    with torch.no_grad():
        want = sequence_logps(model, batch)[0]
        lora.merge(model)
        assert not lora.lora_layers(model)
        torch.testing.assert_close(sequence_logps(model, batch)[0], want, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)  # --merge writes this: a plain model any transformers user loads
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(reloaded, batch)[0], want, rtol=1e-5, atol=1e-5)


def test_target_patterns():
    model, _ = tiny_model("tiny-llava")
    names = lora.add_lora(model, r=2, targets=[r"language_model\..*self_attn\.(q|v)_proj$"])
    assert len(names) == 8 and all(n.endswith(("q_proj", "v_proj")) for n in names)
    # a pattern is the user's word: this one reaches into the vision tower too
    assert len(lora.add_lora(tiny_model("tiny-llava")[0], r=2, targets=[r"self_attn\.q_proj$"])) == 8
    with pytest.raises(ValueError, match="no Linear module matches"):
        lora.add_lora(tiny_model("tiny-llava")[0], r=2, targets=["nothing_here"])
