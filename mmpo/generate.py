"""Batched greedy answers from a VLM: NaPO's biased negatives, SymMPO's contrast answers, eval."""
import torch
from tqdm import tqdm

from mmpo.data import chat_prompt, pad_id


@torch.no_grad()
def answer(model, processor, prompts: list[str], images: list | None, *, max_new_tokens: int = 64,
           batch_size: int = 8, show: bool = False) -> list[str]:
    """Greedy answers to ``prompts``, each with its image (``images`` None: text only)."""
    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues every row from the same last column
    pad = pad_id(tok)
    out = []
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not show):
            texts = [chat_prompt(processor, p, with_image=images is not None) for p in prompts[i:i + batch_size]]
            kwargs = {"images": images[i:i + batch_size]} if images is not None else {}
            inputs = processor(text=texts, return_tensors="pt", padding=True, **kwargs).to(model.device)
            ids = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=1,
                                 pad_token_id=pad)
            new = ids[:, inputs["input_ids"].shape[1]:]  # (b, new tokens)
            out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    finally:
        tok.padding_side = side
    return out
