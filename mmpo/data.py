"""Preference data: checked JSONL rows in (``mmpo/rows.py``), tokenized multi-view batches out.

Each example becomes a prompt per image (m, and m' when a view needs it) and a response per
field; a batch holds every view of every example, so one forward pass scores them all.

Where m' is made. Diffusion noise goes on the processor's normalized pixels (``noise_inputs``), as in
VCD: at t = 500 the residual has std sqrt(1 - abar_500) = 0.505 at any image size. Noise on the
raw image would be averaged away by the processor's downscale, the more the larger the image
(mmpo/bench/RESULTS.md has the measured figures). The crop (mDPO) is
cut from the decoded image and resized back to its size, before the processor; released mDPO
crops the processed square tensor instead. The two agree for square images; under a
centre-cropping processor (LLaVA-1.5's CLIP) a non-square image's m' is the central square of
the resized crop: still at most 20% of the image, but the box is drawn over the whole image,
not only the part the model sees.
"""
import copy
from dataclasses import dataclass, field

import torch
from PIL import Image

from mmpo import perturb
from mmpo.constants import M_PRIMES, NOISE_STEP, VIEWS
from mmpo.images import load_image, to_pil, to_tensor
from mmpo.perturb import stable_seed
from mmpo.rows import DataError, read_rows, required_fields


def pixel_keys(inputs: dict) -> list[str]:
    """The processor outputs that hold normalized pixels (not masks or grid sizes)."""
    return [k for k, v in inputs.items() if k.startswith("pixel_values") and v.is_floating_point()]


def processed_mask(image_processor, mask: Image.Image) -> dict[str, torch.Tensor]:
    """A region mask (white = 1) carried through the model's own image processor, so it lines
    up with the processed pixel tensor element for element, whatever the layout (resized,
    centre-cropped, tiled or patch-flattened). The processor's resize is linear and its
    rescale and normalization affine, so the mask's value v comes back from the three images
    mask, black and white as v = (p_mask - p_black) / (p_white - p_black)."""
    size = mask.size
    out = [image_processor(images=[im], return_tensors="pt")
           for im in (mask.convert("RGB"), Image.new("RGB", size, (0, 0, 0)), Image.new("RGB", size, (255, 255, 255)))]
    return {k: ((out[0][k] - out[1][k]) / (out[2][k] - out[1][k])).clamp(0, 1) for k in pixel_keys(out[0])}


def pad_id(tokenizer) -> int:
    """The id that fills padding: the pad token, or end-of-sequence for tokenizers without one."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def chat_prompt(processor, prompt: str, with_image: bool = True) -> str:
    """The model's own chat format for one user turn (image, then text), ready for the answer."""
    if not getattr(processor, "chat_template", None):  # a base model: image token, then the text
        image = getattr(processor, "image_token", "<image>") + "\n" if with_image else ""
        return image + prompt
    content = ([{"type": "image"}] if with_image else []) + ([{"type": "text", "text": prompt}] if prompt else [])
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


@dataclass
class Example:
    """One tokenized example: a prompt per image, a response per field, image tensors."""
    id: str
    prompt_ids: list[torch.Tensor]  # per image: (P,)
    prompt_extra: list[dict]  # per image: other per-token processor outputs, each (P,)
    image_inputs: list[dict]  # per image: processor image outputs, leading dim for this image
    responses: dict[str, torch.Tensor] = field(default_factory=dict)  # field -> (R,)
    skip: str | None = None


class PreferenceDataset(torch.utils.data.Dataset):
    """The rows of a preference JSONL as tokenized multi-view examples; items are dataset
    indices, or (index, epoch) pairs.

    m' (the ``corrupt`` image slot) is, in order: SymMPO's ``contrast_image``; a row's own
    ``corrupt_image``; a row's ``noise_step`` (+ ``noise_mask``), MFPO's region noise as
    ``prepare mfpo`` records it; else made on the fly as ``m_prime`` says. Random m' are drawn from
    (seed, id), the same for the policy and the reference in every epoch, or from (seed, id,
    epoch) with ``redraw=True`` (mDPO's released code draws a new crop every time).
    """

    def __init__(self, path: str, processor, views, *, m_prime: str = "crop", seed: int = 0,
                 max_length: int = 1024, noise_step: int | None = None, prefer_field: bool = True,
                 redraw: bool = False):
        if m_prime not in M_PRIMES:
            raise ValueError(f"unknown m' {m_prime!r}: choose one of {', '.join(M_PRIMES)}")
        self.path, self.processor, self.views = path, processor, tuple(views)
        self.m_prime, self.seed, self.max_length, self.redraw = m_prime, seed, max_length, redraw
        self.noise_step = NOISE_STEP if noise_step is None else noise_step
        self.prefer_field = prefer_field  # use a row's corrupt_image / noise_step when it has one
        self.rows = read_rows(path, required_fields(self.views, m_prime))
        if noise_step is not None and prefer_field:  # an explicit t must not silently differ from the data's
            clash = [r for r in self.rows if r.get("noise_step", noise_step) != noise_step]
            if clash:
                r = clash[0]
                raise DataError([f"{path}:{r['line']}: field 'noise_step': the data was made with t={r['noise_step']}, "
                                 f"--noise-step is {noise_step} (leave --noise-step out to use the data's)"])

    def with_views(self, views) -> "PreferenceDataset":
        """The same rows scored as other views (e.g. only ``chosen``, for difficulty scores)."""
        other = copy.copy(self)
        other.views = tuple(views)
        return other

    def __len__(self):
        return len(self.rows)

    def generator(self, row, epoch: int = 0) -> torch.Generator:
        """The randomness of this row's m': fixed by (seed, id), or (seed, id, epoch) when redrawn."""
        parts = (self.seed, row["id"], epoch) if self.redraw else (self.seed, row["id"])
        return torch.Generator().manual_seed(stable_seed(*parts))

    def m_prime_kind(self, row) -> str:
        """How this row's m' is made: contrast | field | region-noise | crop | noise | blank."""
        if self.m_prime == "contrast":
            return "contrast"
        if self.prefer_field and row.get("corrupt_image"):
            return "field"
        if self.prefer_field and ("noise_step" in row or "noise_mask" in row):
            return "region-noise"
        return self.m_prime

    def images(self, row, epoch: int = 0) -> list[Image.Image | None]:
        """[m] or [m, m'] as images, before the processor (for noise, m' is m: the noise is
        added to its processed pixels); [None] for a text-only row (SFT)."""
        if not row.get("image"):
            return [None]
        img = load_image(row["image"])
        if not any(VIEWS[v][0] == "corrupt" for v in self.views):
            return [img]
        kind = self.m_prime_kind(row)
        if kind in ("contrast", "field"):
            return [img, load_image(row["contrast_image" if kind == "contrast" else "corrupt_image"])]
        if kind in ("crop", "blank"):  # in image space, before the processor
            return [img, to_pil(perturb.corrupt(to_tensor(img), kind, self.generator(row, epoch)))]
        return [img, img]

    def noise_inputs(self, row, inputs: dict, epoch: int = 0) -> dict:
        """m''s processor outputs from m's when m' is noise: VCD's diffusion noise at step t on the
        normalized pixels (within the processed ``noise_mask`` when the row has one)."""
        kind = self.m_prime_kind(row)  # noise | region-noise
        masks = None
        if kind == "region-noise" and row.get("noise_mask"):
            masks = processed_mask(self.processor.image_processor, load_image(row["noise_mask"]).convert("L"))
        t = row.get("noise_step", self.noise_step) if kind == "region-noise" else self.noise_step
        g, out = self.generator(row, epoch), dict(inputs)
        for k in pixel_keys(inputs):
            out[k] = perturb.corrupt(inputs[k], "noise", g, t=t, mask=None if masks is None else masks[k], normalized=True)
        return out

    def __getitem__(self, item) -> Example:
        i, epoch = item if isinstance(item, tuple) else (item, 0)
        row = self.rows[i]
        tok = self.processor.tokenizer
        text = chat_prompt(self.processor, row["prompt"], with_image=bool(row.get("image")))
        ex = Example(row["id"], [], [], [])
        try:
            images = self.images(row, epoch)
        except (OSError, ValueError) as e:
            raise DataError([f"{self.path}:{row['line']}: field 'image': cannot load image ({e})"]) from None
        for slot, img in enumerate(images):
            if slot == 1 and img is images[0]:  # m' shares m's tokens; only its pixels change
                ex.prompt_ids.append(ex.prompt_ids[0])
                ex.prompt_extra.append(ex.prompt_extra[0])
                ex.image_inputs.append(self.noise_inputs(row, ex.image_inputs[0], epoch))
                continue
            enc = self.processor(text=[text], images=None if img is None else [img], return_tensors="pt")
            ids = enc.pop("input_ids")[0]
            enc.pop("attention_mask", None)
            ex.prompt_ids.append(ids)
            ex.prompt_extra.append({k: v[0] for k, v in enc.items() if v.dim() == 2 and v.shape[1] == len(ids)
                                    and not k.startswith("pixel")})
            if img is not None:  # a text-only row has no image inputs
                ex.image_inputs.append({k: v for k, v in enc.items() if k not in ex.prompt_extra[-1]})
        longest_prompt = max(len(p) for p in ex.prompt_ids)
        if longest_prompt >= self.max_length:
            ex.skip = f"{self.path}:{row['line']}: prompt and image take {longest_prompt} tokens, max_length is {self.max_length}"
            return ex
        budget = self.max_length - longest_prompt
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        cut = set(row.get("truncated", []))
        for name in sorted({VIEWS[v][1] for v in self.views}):
            # a generation that stopped at the token limit is not a finished answer: no end-of-sequence
            ids = tok(row[name], add_special_tokens=False)["input_ids"] + (eos if name not in cut else [])
            ex.responses[name] = torch.tensor(ids[:budget], dtype=torch.long)  # responses are truncated, prompts never
        return ex


@dataclass
class Batch:
    """Every view of every example, rows view-major (row = view_index * n_examples + example).

    The prompt is left-padded and the response right-padded, so all responses start at column
    ``prompt_len``: logits are then computed for columns [prompt_len - 1, end - 1) only.
    """
    ids: list[str]
    views: tuple[str, ...]
    input_ids: torch.Tensor  # (N, P + R)
    attention_mask: torch.Tensor  # (N, P + R)
    response_mask: torch.Tensor  # (N, R) True at real response tokens
    prompt_len: int  # P
    image_index: torch.Tensor  # (N,) index into images; -1: no image (a text-only SFT row)
    images: list[dict]  # distinct images, each the processor's image tensors for it
    extra: dict = field(default_factory=dict)  # other per-token inputs (e.g. mm_token_type_ids), (N, P + R)
    skipped: list[str] = field(default_factory=list)  # why each example left out was too long

    def __len__(self):
        return len(self.ids)

    def split(self, logps: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N,) per-row values -> {view: (n_examples,)}."""
        return dict(zip(self.views, logps.view(len(self.views), len(self.ids)).unbind(0)))


def collate(examples: list[Example], views, pad_id: int) -> Batch:
    skipped = [e.skip for e in examples if e.skip]
    examples = [e for e in examples if not e.skip]
    n_img = [len(e.image_inputs) for e in examples]
    offsets = [sum(n_img[:i]) for i in range(len(examples))]
    images = [inp for e in examples for inp in e.image_inputs]
    rows = []  # (prompt ids, prompt extra, response ids, image index)
    for v in views:
        slot, response = VIEWS[v]
        k = 0 if slot == "image" else 1
        for e, off in zip(examples, offsets):
            rows.append((e.prompt_ids[k], e.prompt_extra[k], e.responses[response], off + k if e.image_inputs else -1))
    P = max((len(r[0]) for r in rows), default=0)
    R = max((len(r[2]) for r in rows), default=0)
    N = len(rows)
    input_ids = torch.full((N, P + R), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(N, P + R, dtype=torch.long)
    response_mask = torch.zeros(N, R, dtype=torch.bool)
    extra_keys = sorted(rows[0][1]) if rows else []
    extra = {k: torch.zeros(N, P + R, dtype=rows[0][1][k].dtype) for k in extra_keys}
    for i, (p, p_extra, r, _) in enumerate(rows):
        input_ids[i, P - len(p):P] = p
        input_ids[i, P:P + len(r)] = r
        attention_mask[i, P - len(p):P + len(r)] = 1
        response_mask[i, :len(r)] = True
        for k in extra_keys:
            extra[k][i, P - len(p):P] = p_extra[k]
    image_index = torch.tensor([r[3] for r in rows], dtype=torch.long)
    return Batch([e.id for e in examples], tuple(views), input_ids, attention_mask, response_mask, P,
                 image_index, images, extra, skipped)


