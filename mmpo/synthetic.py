"""The built-in preference dataset: the default run's data, and the tests'."""
import json
import os

import torch

from mmpo.files import write_atomic
from mmpo.images import to_pil


def make_synthetic(out_dir: str, n: int = 256, seed: int = 0, size: int = 32) -> str:
    """A preference dataset you must look at to get right: a colored square on a noisy
    background, "What color is the square?". Every color is the chosen answer for some images
    and the rejected one for others, so the text alone cannot tell chosen from rejected.
    Carries every optional field, so all five objectives train on it; small enough to train on a
    CPU in seconds. Returns the JSONL path."""
    colors = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220),
              "yellow": (230, 210, 20), "purple": (140, 40, 170), "white": (245, 245, 245)}
    names = sorted(colors)
    path = os.path.join(out_dir, "data.jsonl")
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    g = torch.Generator().manual_seed(seed)

    def pick(exclude=()):
        choices = [c for c in names if c not in exclude]
        return choices[int(torch.randint(len(choices), (), generator=g))]

    def draw(name, color):
        bg = (torch.rand(3, generator=g) * 80 + 40).to(torch.uint8)
        pix = bg.view(1, 1, 3).repeat(size, size, 1)
        pix += (torch.rand(size, size, 1, generator=g) * 20).to(torch.uint8)
        side = int(torch.randint(size // 3, size // 2 + 1, (), generator=g))
        top, left = (int(torch.randint(0, size - side + 1, (), generator=g)) for _ in range(2))
        pix[top:top + side, left:left + side] = torch.tensor(colors[color], dtype=torch.uint8)
        to_pil(pix.permute(2, 0, 1) / 255).save(os.path.join(out_dir, "images", name))
        return f"images/{name}"

    answer = "The square is {}.".format
    lines = []
    for i in range(n):
        c = pick()
        c_contrast = pick(exclude=(c,))
        lines.append(json.dumps({
            "id": f"syn-{i}", "image": draw(f"{i}.png", c), "prompt": "What color is the square?",
            "chosen": answer(c), "rejected": answer(pick(exclude=(c,))),
            "contrast_image": draw(f"{i}-contrast.png", c_contrast), "contrast_chosen": answer(c_contrast),
            "lang_biased": answer(pick(exclude=(c,))), "vision_biased": "A picture of a square.",
        }))
    write_atomic(path, "\n".join(lines) + "\n")
    return path
