"""A synthetic world with a language prior, for ``python -m mmpo.toy``.

Each image shows one coloured shape, 5 to 15 pixels across, on a grey background with coloured
noise (32 x 32 pixels, the tiny models' size). Each shape has a *typical*
colour (circles are usually red): in the pre-training (SFT) data it has that colour in a share
``p_prior`` of its images, and one of the other colours otherwise. A model asked "What color is the circle?"
that does not look at the image answers the prior; one that looks answers the image. The
world knows where the object is (its mask: MFPO's region) and can redraw the same scene in
another colour (SymMPO's contrast image).

The preference data carries a *text-only shortcut*, as real hallucination-correction data does:
every rejected answer is hedged ("I think the circle is red.") and every chosen answer is plain,
so DPO's loss can be driven down without looking at the image. In the SFT data a share of the
(always right) answers is hedged, so the base model has no reason to dislike the style.
The held-out pairs have no shortcut: both answers plain, only the colour differs.

Everything is drawn from an explicit seed; images are PNGs any tiny model reads.
"""
import json
import math
import os
from dataclasses import asdict, dataclass, replace

import torch
from PIL import Image, ImageDraw

from mmpo.files import write_atomic
from mmpo.rows import to_pil

COLORS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 220), "yellow": (225, 200, 35)}
SHAPES = ("circle", "square", "triangle", "diamond")
PRIOR = {"circle": "red", "square": "blue", "triangle": "green", "diamond": "yellow"}  # a shape's typical colour
SIZE = 32  # the tiny models' image size


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    cx: int  # centre and half-size of the shape, in pixels
    cy: int
    r: int
    bg: int  # seed of the background and of the object's shade

    @property
    def prior_consistent(self) -> bool:
        return self.color == PRIOR[self.shape]


def question(shape: str) -> str:
    return f"What color is the {shape}?"


def answer(shape: str, color: str, hedged: bool = False) -> str:
    """The plain answer, or the hedged one that marks every rejected answer of the training pairs."""
    return f"I think the {shape} is {color}." if hedged else f"The {shape} is {color}."


def _pick(items, g: torch.Generator):
    return items[int(torch.randint(len(items), (), generator=g))]


def other_color(color: str, g: torch.Generator) -> str:
    return _pick([c for c in COLORS if c != color], g)


def hallucination(s: Scene, g: torch.Generator) -> str:
    """The colour a prior-following model says: the shape's typical colour on a counter-prior
    image, some other colour on a typical one (every rejected answer's)."""
    return PRIOR[s.shape] if not s.prior_consistent else other_color(s.color, g)


def scene(g: torch.Generator, shape: str | None = None, color: str | None = None, p_prior: float = 0.8) -> Scene:
    """A random scene; its colour is the shape's prior with probability ``p_prior`` unless given.
    Sizes run from 5 to 15 pixels across: a small object on a busy background is hard to see,
    and a model unsure of what it sees falls back on the prior."""
    shape = shape or _pick(SHAPES, g)
    if color is None:
        prior = bool(torch.rand((), generator=g) < p_prior)
        color = PRIOR[shape] if prior else other_color(PRIOR[shape], g)
    r = int(torch.randint(2, 8, (), generator=g))
    cx, cy = (int(torch.randint(r + 1, SIZE - r - 1, (), generator=g)) for _ in range(2))
    return Scene(shape, color, cx, cy, r, int(torch.randint(2 ** 31, (), generator=g)))


def _draw(canvas: ImageDraw.ImageDraw, s: Scene, fill):
    x, y, r = s.cx, s.cy, s.r
    if s.shape == "circle":
        canvas.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif s.shape == "square":
        canvas.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    elif s.shape == "triangle":
        canvas.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    else:  # diamond
        canvas.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)


def render(s: Scene) -> tuple[Image.Image, Image.Image]:
    """The scene as an RGB image and the object's mask (L: 255 on the object, 0 elsewhere): a
    shade of the colour on a grey background with coloured noise. Background and shade depend
    only on ``s.bg``, so the scene in another colour differs only on the object."""
    g = torch.Generator().manual_seed(s.bg)
    grey = 80 + 80 * torch.rand((), generator=g)
    bg = (grey + 60 * (torch.rand(SIZE, SIZE, 3, generator=g) - 0.5)).clamp(0, 255).to(torch.uint8)
    shade = (torch.rand(3, generator=g) - 0.5) * 50  # the same offset for every colour of this scene
    fill = tuple(int(v) for v in (torch.tensor(COLORS[s.color]) + shade).clamp(0, 255))
    img = to_pil(bg.permute(2, 0, 1) / 255)  # (3, H, W) in [0, 1]: the same 8-bit levels back
    _draw(ImageDraw.Draw(img), s, fill)
    mask = Image.new("L", (SIZE, SIZE), 0)
    _draw(ImageDraw.Draw(mask), s, 255)
    return img, mask


def _scenes(n: int, p_prior: float, g: torch.Generator) -> list[Scene]:
    """n scenes, each shape in turn; exactly round(n * p_prior) of them show their shape's typical
    colour, spread as evenly as the counts allow over the shapes (the others take the other
    colours at random); in random order."""
    sizes = [len(range(k, n, len(SHAPES))) for k in range(len(SHAPES))]
    typical = [math.floor(size * p_prior) for size in sizes]
    for k in range(math.floor(n * p_prior + 0.5) - sum(typical)):  # the remainder, one per shape
        typical[k] += 1
    scenes = []
    for shape, size, n_typical in zip(SHAPES, sizes, typical):
        scenes += [scene(g, shape, PRIOR[shape] if i < n_typical else other_color(PRIOR[shape], g))
                   for i in range(size)]
    return [scenes[i] for i in torch.randperm(n, generator=g).tolist()]


def _marked(n: int, share: float, g: torch.Generator) -> list[bool]:
    """Exactly round(n * share) of n flags set, at random places."""
    k = math.floor(n * share + 0.5)
    return [i < k for i in torch.randperm(n, generator=g).tolist()] if n else []


class _Writer:
    """Images under ``out/images``, rows as JSON Lines; paths relative to ``out``."""

    def __init__(self, out: str):
        self.out = out
        os.makedirs(os.path.join(out, "images"), exist_ok=True)

    def image(self, img: Image.Image, name: str) -> str:
        img.save(os.path.join(self.out, "images", name))
        return f"images/{name}"

    def rows(self, name: str, rows: list[dict]) -> str:
        path = os.path.join(self.out, name)
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        return path


def build(out: str, *, n_sft: int, n_pref: int, n_heldout: int, n_test: int, p_prior: float = 0.8,
          p_hedged_sft: float = 0.3, counter_share: float = 0.5, seed: int = 0) -> dict[str, str]:
    """Write every split of the world under ``out`` and return their paths. ``p_prior``: the
    share of each shape's SFT images in its typical colour; ``counter_share``: the share of
    counter-prior images in the preference, held-out and test sets (hallucination-correction
    data is rich in the images models get wrong); ``p_hedged_sft``: the share of SFT answers in
    the hedged style. Every share is exact (rounded half up), not a probability.

    - ``sft``: image, prompt, chosen (the SFT answers: prior colours ``p_prior`` of the time);
    - ``prefs``: training pairs with the shortcut (rejected hedged), plus SymMPO's contrast
      image (the same scene in another colour) and its answer;
    - ``prefs_mfpo``: the same pairs with MFPO's region (the object's mask, noise at t = 500);
    - ``prefs_blank``: the same pairs with a black image (DPO's no-image control);
    - ``heldout``: pairs without the shortcut; ``test``: QA rows for ``eval.py --bench qa``;
    - ``scenes``: every scene, for checking.
    """
    g = torch.Generator().manual_seed(seed)
    w = _Writer(out)
    paths, scenes = {}, {}

    sft = []
    for i, (s, hedged) in enumerate(zip(_scenes(n_sft, p_prior, g), _marked(n_sft, p_hedged_sft, g))):
        scenes[f"sft-{i}"] = s
        sft.append({"id": f"sft-{i}", "image": w.image(render(s)[0], f"sft-{i}.png"), "prompt": question(s.shape),
                    "chosen": answer(s.shape, s.color, hedged)})
    paths["sft"] = w.rows("sft.jsonl", sft)

    black = w.image(Image.new("RGB", (SIZE, SIZE)), "black.png")
    prefs, prefs_mfpo, prefs_blank = [], [], []
    for i, s in enumerate(_scenes(n_pref, 1 - counter_share, g)):
        wrong = hallucination(s, g)
        contrast = replace(s, color=other_color(s.color, g))  # SymMPO's: the same scene in another colour
        img, mask = render(s)
        scenes[f"pref-{i}"] = s
        row = {"id": f"pref-{i}", "image": w.image(img, f"pref-{i}.png"), "prompt": question(s.shape),
               "chosen": answer(s.shape, s.color), "rejected": answer(s.shape, wrong, hedged=True)}
        prefs.append({**row, "contrast_image": w.image(render(contrast)[0], f"pref-{i}-contrast.png"),
                      "contrast_chosen": answer(s.shape, contrast.color)})
        prefs_mfpo.append({**row, "noise_mask": w.image(mask, f"pref-{i}-mask.png"), "noise_step": 500})
        prefs_blank.append({**row, "image": black})
    paths["prefs"] = w.rows("prefs.jsonl", prefs)
    paths["prefs_mfpo"] = w.rows("prefs-mfpo.jsonl", prefs_mfpo)
    paths["prefs_blank"] = w.rows("prefs-blank.jsonl", prefs_blank)

    heldout = []
    for i, s in enumerate(_scenes(n_heldout, 1 - counter_share, g)):
        wrong = hallucination(s, g)
        scenes[f"heldout-{i}"] = s
        heldout.append({"id": f"heldout-{i}", "image": w.image(render(s)[0], f"heldout-{i}.png"),
                        "prompt": question(s.shape), "chosen": answer(s.shape, s.color),
                        "rejected": answer(s.shape, wrong)})
    paths["heldout"] = w.rows("heldout.jsonl", heldout)

    test = []
    for i, s in enumerate(_scenes(n_test, 1 - counter_share, g)):
        scenes[f"test-{i}"] = s
        test.append({"id": f"test-{i}", "image": w.image(render(s)[0], f"test-{i}.png"), "question": question(s.shape),
                     "answer": s.color, "options": list(COLORS), "prior": PRIOR[s.shape],
                     "group": "prior" if s.prior_consistent else "counter-prior"})
    paths["test"] = w.rows("test.jsonl", test)
    paths["scenes"] = w.rows("scenes.jsonl", [{"id": k, **asdict(s)} for k, s in scenes.items()])
    return paths
