"""Load a vision-language model and its processor: a real one by hub id or local directory
(transformers' Auto classes: anything that loads as image-text-to-text), or a tiny random one
(``mmpo/tiny.py``); and the parts of a VLM that training treats apart (its language model, its
vision tower).
"""
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmpo.constants import TINY_MODELS
from mmpo.tiny import tiny_model


def load_model(name_or_path: str, *, dtype=torch.float32, trust_remote_code: bool = False, seed: int = 0):
    if name_or_path in TINY_MODELS:
        model, processor = tiny_model(name_or_path, seed)
        return model.to(dtype), processor
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return model, processor


def language_model(model) -> torch.nn.Module:
    """The text decoder inside a VLM (LoRA targets it; FSDP shards its blocks)."""
    inner = getattr(model, "model", model)
    for name in ("language_model", "text_model"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise ValueError(f"cannot find the language model inside {type(model).__name__}")


def freeze_vision_tower(model):
    """The vision encoder stays frozen in every method here (the projector may train)."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("vision_tower", "visual", "vision_model"):
            module.requires_grad_(False)


def image_path_frozen(model) -> bool:
    """True when nothing between the pixels and the language model trains (vision tower and
    projector frozen), so image features are the same for the policy and the reference."""
    lm_params = {id(p) for m in (language_model(model), model.get_output_embeddings()) for p in m.parameters()}
    return not any(p.requires_grad for p in model.parameters() if id(p) not in lm_params)

