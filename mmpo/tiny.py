"""Tiny random VLMs built from config classes, with a byte-level tokenizer made in code: the
default run's model and the tests'. Nothing is downloaded; ``load_model("tiny-llava")`` gives one.
"""
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# A minimal chat template: user turn with the image, then the assistant's turn.
# transformers renders templates with trim_blocks, hence the explicit {{ '\n' }}.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}{% else %}{{ 'ASSISTANT: ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ IMAGE }}{{ '\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, in its fixed order (ids must not depend on
    the hash seed, which ByteLevel.alphabet()'s set order does)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in printable]  # whitespace and control bytes: shifted past 255
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


def byte_tokenizer(specials: list[str], image_token: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no files: token id = byte value, special tokens after 256."""
    vocab = {**{ch: b for b, ch in _bytes_to_unicode().items()}, **{t: 256 + i for i, t in enumerate(specials)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=[t for t in specials if t not in ("<s>", "</s>", "<pad>")])
    fast.image_token = image_token
    fast.chat_template = CHAT_TEMPLATE.replace("{{ IMAGE }}", "{{ '%s' }}" % image_token)
    return fast


# the language model of every tiny VLM
TINY_TEXT = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, tie_word_embeddings=False)


def tiny_llava(seed: int = 0, size: int = 32, patch: int = 8, vocab_size: int | None = None, text: dict | None = None):
    """A ~3M-parameter LLaVA: CLIP vision tower + Llama. ``size``/``patch``/``vocab_size`` give
    it a real model's proportions for benchmarks (LLaVA-1.5: 336, 14, 32000); ``text`` replaces
    entries of the language model's config (``TINY_TEXT``: its width and depth)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    processor = tiny_llava_processor(size, patch)
    tok = processor.tokenizer
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                              image_size=size, patch_size=patch, projection_dim=64)
    text = LlamaConfig(vocab_size=vocab_size or len(tok), max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **{**TINY_TEXT, **(text or {})})
    # feature layer -2 as in LLaVA-1.5 (with -1 CLIP's post-layernorm would get no gradient)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=(size // patch) ** 2, vision_feature_select_strategy="default",
                         vision_feature_layer=-2, projector_hidden_act="gelu")
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config), processor


def tiny_llava_processor(size: int = 32, patch: int = 8):
    """LLaVA's processor (a CLIP image processor: shortest edge to ``size``, centre crop, CLIP's
    normalization) with the byte tokenizer; size 336 and patch 14 are LLaVA-1.5's."""
    from transformers import CLIPImageProcessor, LlavaProcessor
    tok = byte_tokenizer(["<s>", "</s>", "<pad>", "<image>"], "<image>")
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=tok.chat_template)


def _tiny_qwen2vl(seed: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    specials = ["<s>", "</s>", "<pad>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = byte_tokenizer(specials, "<|image_pad|>")
    tok.chat_template = CHAT_TEMPLATE.replace("{{ IMAGE }}", "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}")
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    text = dict(vocab_size=len(tok), max_position_embeddings=1024, bos_token_id=None, eos_token_id=ids["</s>"],
                rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 10000.0},
                pad_token_id=ids["<pad>"], **TINY_TEXT)
    vision = dict(depth=2, embed_dim=64, hidden_size=256, num_heads=4, mlp_ratio=2, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    grid = dict(min_pixels=32 * 32, max_pixels=32 * 32, patch_size=8, merge_size=2, temporal_patch_size=2)
    return model, Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**grid), tokenizer=tok,
                                   video_processor=Qwen2VLVideoProcessor(**grid), chat_template=tok.chat_template)


def _tiny_idefics3(seed: int):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor
    specials = ["<s>", "</s>", "<pad>", "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    tok = byte_tokenizer(specials, "<image>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    text = dict(vocab_size=len(tok), max_position_embeddings=512, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
                eos_token_id=ids["</s>"], **TINY_TEXT)
    config = Idefics3Config(vision_config=vision, text_config=text, image_token_id=ids["<image>"], scale_factor=2,
                            tie_word_embeddings=False, pad_token_id=ids["<pad>"])
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    # one 32 px tile, no splitting: 16 patches, pixel-shuffled by 2 into 4 image tokens
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                             max_image_size={"longest_edge": 32})
    return model, Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                                    chat_template=tok.chat_template)


def tiny_model(name: str, seed: int = 0):
    builders = {"tiny-llava": tiny_llava, "tiny-qwen2vl": _tiny_qwen2vl, "tiny-idefics3": _tiny_idefics3}
    if name not in builders:
        raise ValueError(f"unknown tiny model {name!r}: choose one of {', '.join(builders)}")
    model, processor = builders[name](seed)
    processor.tokenizer.padding_side = "right"
    return model, processor
