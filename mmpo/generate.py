"""Batched answers from a VLM: NaPO's biased negatives, SymMPO's contrast answers, eval.

Greedy by default; beam search (NaPO's released generation uses 3 beams) with or without
sampling on request. Each answer comes with whether it stopped at the token limit: such an
answer is cut mid-sentence, and training must not append an end-of-sequence token to it.
"""
import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from mmpo.data import chat_prompt, pad_id


# LLaVA's ``llava_v1`` conversation (haotian-liu/LLaVA llava/conversation.py, conv_llava_v1): LLaVA-1.5's
# own format, in which NaPO's released code generates its biased answers.
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")


def llava_v1_prompt(prompt: str, with_image: bool = True, image_token: str = "<image>") -> str:
    """One user turn in the ``llava_v1`` conversation, ready for the answer: the system prompt,
    " " (its first separator), "USER: " + the message, " " (the separator after a user turn),
    then "ASSISTANT:" (sep2 "</s>" comes only after an answer). The message is the image token
    and a newline before the text, as LLaVA writes it; an empty text leaves "<image>\n" alone
    (NaPO's image-only prompt), no image leaves the text alone (its question-only prompt)."""
    message = (image_token + "\n" if with_image else "") + prompt
    return f"{LLAVA_V1_SYSTEM} USER: {message} ASSISTANT:"


def eos_ids(model, tokenizer) -> set[int]:
    """Every token id that ends a generation (generation config, else the tokenizer's)."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = tokenizer.eos_token_id if ids is None else ids
    return set(ids) if isinstance(ids, (list, tuple)) else {ids} - {None}


class Progress(StoppingCriteria):
    """Moves a progress bar one step for each token generated (each step of the search, every beam
    at once), so that a long generation shows it is running; it never stops one."""

    def __init__(self, bar):
        self.bar, self.steps = bar, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.steps += 1
        self.bar.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate(model, processor, prompts: list[str], images: list | None, *, max_new_tokens: int = 1024,
             num_beams: int = 1, do_sample: bool = False, temperature: float = 1.0, batch_size: int = 8,
             show: bool = False, llava_v1: bool = False) -> tuple[list[str], list[int]]:
    """Answers to ``prompts``, each with its image (``images`` None: text only), and how many
    tokens each generated before its end-of-sequence token: ``max_new_tokens`` means it was cut
    there (the count is of generated tokens, not of the decoded text tokenized again). Prompts go
    in the processor's chat template, or with ``llava_v1`` in LLaVA's ``llava_v1`` conversation
    (``llava_v1_prompt``; the processor still expands its image token)."""
    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues every row from the same last column
    pad, stop = pad_id(tok), eos_ids(model, tok)
    texts_out, lengths = [], []
    sampling = dict(do_sample=True, temperature=temperature) if do_sample else dict(do_sample=False)
    n_batches = -(-len(prompts) // batch_size)
    # in tokens: batch k of n fills its max_new_tokens steps (the steps an early end saves, at once)
    bar = tqdm(total=n_batches * max_new_tokens, desc="generate", unit="tok", disable=not show, dynamic_ncols=True,
               leave=False)  # under a caller's own bar (prepare's rows): gone once done
    try:
        for k, i in enumerate(range(0, len(prompts), batch_size)):
            bar.set_postfix_str(f"batch {k + 1}/{n_batches} of {batch_size}, {num_beams} beam{'s' * (num_beams > 1)}")
            progress = Progress(bar)
            with_image = images is not None
            texts = [llava_v1_prompt(p, with_image, getattr(processor, "image_token", "<image>")) if llava_v1
                     else chat_prompt(processor, p, with_image=with_image) for p in prompts[i:i + batch_size]]
            kwargs = {"images": images[i:i + batch_size]} if images is not None else {}
            inputs = processor(text=texts, return_tensors="pt", padding=True, **kwargs).to(model.device)
            ids = model.generate(**inputs, **sampling, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                 min_new_tokens=1, pad_token_id=pad,
                                 stopping_criteria=StoppingCriteriaList([progress] if show else []))
            bar.update(max_new_tokens - progress.steps)
            new = ids[:, inputs["input_ids"].shape[1]:]  # (b, new tokens)
            # a finished row is padded after its end-of-sequence token; an unfinished one ran to the limit
            lengths += [next((k for k, t in enumerate(row) if t in stop), len(row)) for row in new.tolist()]
            texts_out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    finally:
        bar.close()
        tok.padding_side = side
    return texts_out, lengths
