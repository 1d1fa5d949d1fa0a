"""A captioning world scored by CHAIR, for the toy experiment: hallucinated objects driven by a
co-occurrence prior, the failure that CHAIR measures and the papers' headline metric.

Each image (32 x 32 pixels, grey with coloured noise as in ``world.py``) is a 2 x 2 grid of
16 x 16 cells; a scene holds 1 to 4 objects, each in its own cell, each drawn with a little
jitter of position, size and shade. There are 8 classes, each a glyph of its own shape and
colour, named by a COCO word that CHAIR reads as itself, in 4 pairs of (lead, companion):
(fork, knife), (cup, spoon), (dog, frisbee), (car, truck).

The prior: in the SFT images a lead comes with its companion in a share ``p_cooccur`` of its
appearances (exact, rounded half up), and the text-only SFT rows always name them together.
Companions also come alone. A model that does not look names the usual companion of a lead.
A scene holds one or two pairs, each as its lead with or without its companion, or its
companion alone (a quarter of them). Everywhere but the SFT data a scene is *counter* (one lead
without its companion, where hallucination happens) or *typical* (every lead with its companion).

Captions follow one template, objects in reading order of their cells (top-left, top-right,
bottom-left, bottom-right): "There is a fork." / "There is a fork and a knife." / "There is a
fork, a knife and a cup." The hallucinated object is the companion of a lead without it, else
the partner of any object without it, else any absent object.

The preference pairs carry a *text-only shortcut*, as real hallucination-correction data does:
a rejected caption is the chosen one with one absent object added (after its partner), so it
is one object longer, and "prefer the shorter caption" wins every such training pair without
looking (every pair by default; ``shortcut_share`` of them). The held-out pairs have no
shortcut: one present object is replaced by the hallucinated one, so both captions have the
same length; they come in couples, the second pair showing the scene its first pair's rejected
caption describes, the captions swapped, so that the text alone is right on exactly one of the
two (``world.py``). MFPO's noise region is an oracle: the world's own mask of every present
object, which real data has to estimate.

Everything is drawn from one seed; images are PNGs any tiny model reads.
"""
from dataclasses import asdict, dataclass

import torch
from PIL import Image, ImageDraw

from mmpo.images import to_pil
from mmpo.toy.world import SIZE, _marked, _pick, _Writer

PAIRS = (("fork", "knife"), ("cup", "spoon"), ("dog", "frisbee"), ("car", "truck"))  # (lead, companion)
PARTNER = {**{a: b for a, b in PAIRS}, **{b: a for a, b in PAIRS}}
LEADS = {a for a, _ in PAIRS}
P_ALONE = 0.25  # of a scene's pairs, the share shown as the companion alone
CELL = SIZE // 2
DARK = (30, 30, 30)  # wheels
PROMPT = "Describe the image."

# name -> (RGB, parts): PIL primitives in unit coordinates of the glyph's box (a line's width in
# pixels last); wheels are drawn dark. Shapes and colours both differ, so either tells them apart.
GLYPHS = {
    "fork": ((225, 225, 235), [("line", (0.15, 0, 0.15, 0.45), 1), ("line", (0.5, 0, 0.5, 0.45), 1),
                               ("line", (0.85, 0, 0.85, 0.45), 1), ("line", (0.15, 0.45, 0.85, 0.45), 1),
                               ("line", (0.5, 0.45, 0.5, 1), 2)]),  # three thin tines on a handle
    "knife": ((60, 205, 220), [("line", (0.05, 0.95, 0.95, 0.05), 3)]),  # a diagonal blade
    "cup": ((215, 40, 40), [("line", (0.1, 0, 0.1, 1), 2), ("line", (0.1, 1, 0.9, 1), 2),
                            ("line", (0.9, 0, 0.9, 1), 2)]),  # a U
    "spoon": ((235, 205, 30), [("ellipse", (0.2, 0, 0.8, 0.5)), ("line", (0.5, 0.5, 0.5, 1), 2)]),
    "dog": ((150, 85, 35), [("rect", (0.05, 0.35, 0.75, 0.65)), ("rect", (0.65, 0.1, 0.95, 0.4)),
                            ("line", (0.15, 0.65, 0.15, 1), 1), ("line", (0.65, 0.65, 0.65, 1), 1),
                            ("line", (0.05, 0.35, 0, 0.1), 1)]),  # body, head, two legs, tail
    "frisbee": ((230, 70, 200), [("ellipse", (0, 0.3, 1, 0.7))]),  # a flat disc
    "car": ((45, 85, 220), [("rect", (0, 0.35, 1, 0.75)), ("rect", (0.25, 0.1, 0.75, 0.35)),
                            ("wheel", (0.05, 0.65, 0.4, 1)), ("wheel", (0.6, 0.65, 0.95, 1))]),
    "truck": ((40, 165, 60), [("rect", (0, 0, 0.6, 0.75)), ("rect", (0.6, 0.3, 1, 0.75)),
                              ("wheel", (0.05, 0.65, 0.4, 1)), ("wheel", (0.6, 0.65, 0.95, 1))]),
}


@dataclass(frozen=True)
class Scene:
    objects: tuple[str, ...]  # in reading order of their cells
    cells: tuple[int, ...]  # increasing: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    seed: int  # of the background and of every object's jitter and shade

    @property
    def counter(self) -> bool:
        """A lead without its companion: where a model that follows the prior hallucinates."""
        return any(o in LEADS and PARTNER[o] not in self.objects for o in self.objects)


def caption(objects) -> str:
    """The one template: "There is a fork, a knife and a cup." (reading order)."""
    names = [f"a {o}" for o in objects]
    return f"There is {names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' and ' + names[-1]}."


def hallucination(s: Scene, g: torch.Generator) -> tuple[int | None, str]:
    """The absent object a prior-following model names, and the index of the present object it
    comes with: the companion of a lead without it; else the partner of any object without it;
    else any absent object (index None)."""
    alone = [i for i, o in enumerate(s.objects) if PARTNER[o] not in s.objects]
    if alone:
        i = _pick([i for i in alone if s.objects[i] in LEADS] or alone, g)
        return i, PARTNER[s.objects[i]]
    return None, _pick([o for o in GLYPHS if o not in s.objects], g)


def added(s: Scene, g: torch.Generator) -> str:
    """The rejected caption of a training pair: one absent object added after its partner."""
    i, extra = hallucination(s, g)
    objects = list(s.objects)
    objects.insert(len(objects) if i is None else i + 1, extra)
    return caption(objects)


def replaced(s: Scene, g: torch.Generator) -> Scene:
    """The scene a held-out pair's rejected caption describes: as many objects, one present object
    replaced by the hallucinated one (not the object it comes with, unless that is alone), in the
    same cell with the same jitter."""
    i, extra = hallucination(s, g)
    others = [j for j in range(len(s.objects)) if j != i]
    objects = list(s.objects)
    objects[_pick(others, g) if others else i] = extra
    return Scene(tuple(objects), s.cells, s.seed)


def _scenes(n: int, g: torch.Generator, p_cooccur: float | None = None, counter_share: float | None = None):
    """n scenes of one or two pairs each, in cells at random. With ``p_cooccur`` (SFT), exactly
    round(p_cooccur * leads) of the leads shown come with their companion; with ``counter_share``,
    exactly round(counter_share * n) scenes show their first lead alone (counter) and every other
    lead has its companion."""
    plans = []  # per scene: (pair, lead shown)
    for _ in range(n):
        pairs = torch.randperm(len(PAIRS), generator=g)[:1 + int(torch.randint(2, (), generator=g))].tolist()
        plans.append([(PAIRS[k], bool(torch.rand((), generator=g) >= P_ALONE)) for k in pairs])
    if p_cooccur is not None:
        together = iter(_marked(sum(lead for plan in plans for _, lead in plan), p_cooccur, g))
        counter = [False] * n
    else:
        together, counter = None, _marked(n, counter_share, g)
    scenes = []
    for plan, is_counter in zip(plans, counter):
        if is_counter:
            plan[0] = (plan[0][0], True)
        objects = []
        for u, ((lead, companion), shown) in enumerate(plan):
            if not shown:
                objects.append(companion)
            elif is_counter and u == 0:
                objects.append(lead)
            else:
                objects += [lead, companion] if together is None or next(together) else [lead]
        order = torch.randperm(len(objects), generator=g).tolist()
        cells = sorted(torch.randperm(4, generator=g)[:len(objects)].tolist())
        seed = int(torch.randint(2 ** 31, (), generator=g))
        scenes.append(Scene(tuple(objects[k] for k in order), tuple(cells), seed))
    return scenes


def _draw(canvas: ImageDraw.ImageDraw, name: str, x0: int, y0: int, size: int, fill, wheel_fill):
    def at(u, v):
        return x0 + round(u * (size - 1)), y0 + round(v * (size - 1))

    for kind, box, *width in GLYPHS[name][1]:
        xy = [*at(*box[:2]), *at(*box[2:])]
        if kind == "line":
            canvas.line(xy, fill=fill, width=width[0])
        elif kind == "rect":
            canvas.rectangle(xy, fill=fill)
        else:  # ellipse, wheel
            canvas.ellipse(xy, fill=wheel_fill if kind == "wheel" else fill)


def render(s: Scene) -> tuple[Image.Image, Image.Image]:
    """The scene as an RGB image and the mask of every object (L: 255 on objects, 0 elsewhere).
    Each object's box is 9 to 12 pixels, at least a pixel from its cell's edges; its shade is
    its colour moved by up to 20 per channel. The jitter is drawn the same way whatever the
    class, so one seed puts any class in the same place."""
    g = torch.Generator().manual_seed(s.seed)
    grey = 80 + 80 * torch.rand((), generator=g)
    bg = (grey + 60 * (torch.rand(SIZE, SIZE, 3, generator=g) - 0.5)).clamp(0, 255).to(torch.uint8)
    img = to_pil(bg.permute(2, 0, 1) / 255)  # (3, H, W) in [0, 1]: the same 8-bit levels back
    mask = Image.new("L", (SIZE, SIZE), 0)
    canvas, outline = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for name, cell in zip(s.objects, s.cells):
        size = int(torch.randint(9, 13, (), generator=g))
        x0, y0 = (CELL * c + int(torch.randint(1, CELL - size, (), generator=g)) for c in (cell % 2, cell // 2))
        shade = (torch.rand(3, generator=g) - 0.5) * 40
        fill = tuple(int(v) for v in (torch.tensor(GLYPHS[name][0]) + shade).clamp(0, 255))
        _draw(canvas, name, x0, y0, size, fill, DARK)
        _draw(outline, name, x0, y0, size, 255, 255)
    return img, mask


def _kinds(n: int, p_text_only: float, p_image_only: float, g: torch.Generator) -> list[str]:
    """Exactly round(n * p) rows of each kind ("text", "image"), the rest "caption", at random places."""
    k_text, k_image = int(n * p_text_only + 0.5), int(n * p_image_only + 0.5)
    return ["text" if r < k_text else "image" if r < k_text + k_image else "caption"
            for r in torch.randperm(n, generator=g).tolist()]


def build(out: str, *, n_sft: int, n_pref: int, n_heldout: int, n_test: int, p_cooccur: float = 0.8,
          counter_share: float = 0.5, p_text_only: float = 0.1, p_image_only: float = 0.1,
          shortcut_share: float = 1.0, seed: int = 0) -> dict[str, str]:
    """Write every split of the world under ``out`` and return their paths. Every share is exact
    (rounded half up), not a probability.

    - ``sft``: image, prompt "Describe the image.", chosen (the caption); as in LLaVA-1.5's SFT
      mix, a share ``p_text_only`` of rows without an image ("Describe a scene with a fork." ->
      "There is a fork and a knife.": the prior in text) and ``p_image_only`` with an empty prompt;
    - ``prefs``: training pairs, a share ``shortcut_share`` with the shortcut (rejected = one
      object added; the others as held out: one replaced), a share ``counter_share`` of counter
      scenes; ``prefs_mfpo``: the same with MFPO's oracle region
      (``noise_mask``, t = 500);
    - ``prefs_blank``: the same pairs with a black image (DPO's no-image control);
    - ``heldout``: pairs without the shortcut (one object replaced), ``n_heldout // 2`` couples;
    - ``test``: rows for ``eval.py --bench chair`` (objects: the true COCO words), grouped
      "counter" or "typical";
    - ``scenes``: every scene, for checking.
    """
    g = torch.Generator().manual_seed(seed)
    w = _Writer(out)
    paths, scenes = {}, {}

    kinds = _kinds(n_sft, p_text_only, p_image_only, g)
    drawn = iter(_scenes(sum(k != "text" for k in kinds), g, p_cooccur=p_cooccur))
    sft = []
    for i, kind in enumerate(kinds):
        if kind == "text":
            lead, companion = _pick(PAIRS, g)
            sft.append({"id": f"sft-{i}", "prompt": f"Describe a scene with a {lead}.",
                        "chosen": caption([lead, companion])})
            continue
        s = scenes[f"sft-{i}"] = next(drawn)
        sft.append({"id": f"sft-{i}", "image": w.image(render(s)[0], f"sft-{i}.png"),
                    "prompt": PROMPT if kind == "caption" else "", "chosen": caption(s.objects)})
    paths["sft"] = w.rows("sft.jsonl", sft)

    black = w.image(Image.new("RGB", (SIZE, SIZE)), "black.png")
    prefs, prefs_mfpo, prefs_blank = [], [], []
    pairs = _scenes(n_pref, g, counter_share=counter_share)
    for i, (s, marked) in enumerate(zip(pairs, _marked(n_pref, shortcut_share, g))):
        img, mask = render(s)
        scenes[f"pref-{i}"] = s
        row = {"id": f"pref-{i}", "image": w.image(img, f"pref-{i}.png"), "prompt": PROMPT,
               "chosen": caption(s.objects), "rejected": added(s, g) if marked else caption(replaced(s, g).objects)}
        prefs.append(row)  # (a row with a region would be noised for every method: mDPO's m' too)
        prefs_mfpo.append({**row, "noise_mask": w.image(mask, f"pref-{i}-mask.png"), "noise_step": 500})
        prefs_blank.append({**row, "image": black})
    paths["prefs"] = w.rows("prefs.jsonl", prefs)
    paths["prefs_mfpo"] = w.rows("prefs-mfpo.jsonl", prefs_mfpo)
    paths["prefs_blank"] = w.rows("prefs-blank.jsonl", prefs_blank)

    heldout = []  # in couples: a scene's pair, then the rejected caption's scene, the captions swapped
    for i, s in enumerate(_scenes(n_heldout // 2, g, counter_share=counter_share)):
        other = replaced(s, g)
        for half, (t, rejected) in zip("ab", ((s, other), (other, s))):
            name = f"heldout-{i}{half}"
            scenes[name] = t
            heldout.append({"id": name, "couple": i, "image": w.image(render(t)[0], f"{name}.png"), "prompt": PROMPT,
                            "chosen": caption(t.objects), "rejected": caption(rejected.objects)})
    paths["heldout"] = w.rows("heldout.jsonl", heldout)

    test = []
    for i, s in enumerate(_scenes(n_test, g, counter_share=counter_share)):
        scenes[f"test-{i}"] = s
        test.append({"id": f"test-{i}", "image": w.image(render(s)[0], f"test-{i}.png"), "prompt": PROMPT,
                     "objects": list(s.objects), "group": "counter" if s.counter else "typical"})
    paths["test"] = w.rows("test.jsonl", test)
    paths["scenes"] = w.rows("scenes.jsonl", [{"id": k, **asdict(s), "counter": s.counter} for k, s in scenes.items()])
    return paths
