"""Image perturbations that build the dispreferred image m' of mDPO, MFPO, NaPO and SymMPO.

Every function takes a float image ``(C, H, W)`` or a batch ``(B, C, H, W)``, keeps its dtype
and device, and draws its randomness from an explicit ``torch.Generator`` so that one m' can be
reproduced exactly (the policy and the reference must see the same m' in a step). ``corrupt`` is
the one entry point by name (``crop``, ``noise``, ``blank``: the words of ``train.py --m-prime``
and ``prepare symmpo --contrast``), for training's m' and for prepared images alike; the
functions below it are the perturbations themselves. Each public one's "Lifting it" names
everything a copy needs (tests/test_perturb.py lifts each with exactly those names).
"""
import hashlib
import math

import torch
import torch.nn.functional as F

from mmpo.constants import NOISE_STEP, NOISE_STEPS


def stable_seed(*parts) -> int:
    """A seed from (run seed, example id, ...) that is the same in every process and every run:
    what makes one m' reproducible (the policy and the reference must see the same one)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1



def corrupt(x: torch.Tensor, kind: str, generator=None, *, t: int = NOISE_STEP, mask=None, normalized: bool = False,
            value: float = 0.0) -> torch.Tensor:
    """m' from an image ``x``, (C, H, W) or (B, C, H, W), by the name the flags use:

    - ``crop``: mDPO's ``random_crop`` (a box of 1-20% of the image, resized back), on the
      decoded image in [0, 1], before any processor;
    - ``noise``: ``diffusion_noise`` at step ``t`` of ``NOISE_STEPS`` (only inside ``mask`` when
      given: MFPO's key regions). Training adds it to the processor's *normalized* pixel tensor
      (``normalized=True``), as VCD does, so its strength does not depend on the image's size;
      an image in [0, 1] (``prepare symmpo --contrast noise``, which bakes m' into a file the
      model must answer for) is rescaled to [-1, 1], the range diffusion models work in, and back;
    - ``blank``: an image of the same shape filled with ``value`` (0 black, 1 white).

    The result can leave [0, 1] (noise); whoever turns it into an 8-bit image clamps it.
    Lifting it: copy ``NOISE_STEPS`` and ``NOISE_STEP`` (mmpo/constants.py), ``random_crop``,
    ``crop_box``, ``_batched``, ``_uniform``, ``diffusion_noise``, ``alpha_bar`` and ``blank`` with it;
    it needs ``math``, ``torch`` and ``F`` (torch.nn.functional).
    """
    if kind == "crop":
        return random_crop(x, generator=generator)
    if kind == "noise" and normalized:
        return diffusion_noise(x, t=t, mask=mask, generator=generator, steps=NOISE_STEPS)
    if kind == "noise":
        return (diffusion_noise(x * 2 - 1, t=t, mask=mask, generator=generator, steps=NOISE_STEPS) + 1) / 2
    if kind == "blank":
        return blank(x, value)
    raise ValueError(f"unknown corruption {kind!r}: choose crop, noise or blank")


def _batched(img: torch.Tensor):
    """(C, H, W) -> (1, C, H, W) and a function to undo it."""
    if img.dim() == 3:
        return img.unsqueeze(0), lambda x: x.squeeze(0)
    if img.dim() == 4:
        return img, lambda x: x
    raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W), got shape {tuple(img.shape)}")


def _uniform(lo: float, hi: float, generator) -> float:
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def crop_box(h: int, w: int, area=(0.01, 0.2), ratio=(3 / 4, 4 / 3), generator=None):
    """A random box (top, left, height, width) covering a fraction ``area`` of an h x w image,
    with aspect ratio (width / height) in ``ratio``: torchvision's RandomResizedCrop.get_params
    (which mDPO's released code calls). When ten tries all miss (an area bound larger than the
    image, or an image too elongated for the ratio bounds), its fallback: the whole image when
    its own aspect ratio is within ``ratio``, else the largest centred box at the nearer bound."""
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = _uniform(*area, generator) * h * w
        r = math.exp(_uniform(*log_r, generator))
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (), generator=generator))
            return top, left, ch, cw
    ch, cw = h, w
    if w / h < min(ratio):  # too tall: full width, the tallest box the ratio allows
        ch = round(w / min(ratio))
    elif w / h > max(ratio):  # too wide: full height
        cw = round(h * max(ratio))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_crop(img: torch.Tensor, area=(0.01, 0.2), ratio=(3 / 4, 4 / 3), generator=None):
    """mDPO's corrupted image: keep a random crop of ``area`` (fraction of the image) and resize
    it back to the input size, so the answer y_w is no longer fully supported by the image.
    The released code uses RandomResizedCrop(scale=(0.01, 0.2)); Table 3 also tries (0.2, 0.5).
    A batch gets one independent box per image.

    Lifting it: copy ``crop_box``, ``_batched`` and ``_uniform`` with it; it needs ``math``, ``torch``
    and ``F`` (torch.nn.functional).
    """
    x, unbatch = _batched(img)
    _, _, h, w = x.shape
    out = []
    for one in x:  # one: (C, H, W)
        top, left, ch, cw = crop_box(h, w, area, ratio, generator)
        patch = one[:, top:top + ch, left:left + cw].unsqueeze(0).float()  # (1, C, ch, cw)
        out.append(F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False))
    return unbatch(torch.cat(out).to(img.dtype))


def alpha_bar(steps: int = NOISE_STEPS) -> torch.Tensor:
    """Cumulative signal fraction abar_t of the noise schedule of visual contrastive decoding
    (VCD, Leng et al. 2024), which MFPO cites: beta_t = sigmoid(linspace(-6, 6, T)) *
    (5e-3 - 1e-5) + 1e-5, abar_t = prod_{s<=t} (1 - beta_s). Shape (steps,), float64."""
    betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, dim=0)


def diffusion_noise(img: torch.Tensor, t: int = NOISE_STEP, mask=None, generator=None, steps: int = NOISE_STEPS):
    """Forward diffusion to step t: m' = sqrt(abar_t) * x + sqrt(1 - abar_t) * eps, eps ~ N(0, I).

    As in VCD, ``img`` is the model's *normalized pixel tensor*, after its processor has resized
    and normalized the image: then t = 500 means a residual m' - sqrt(abar) * m of standard
    deviation sqrt(1 - abar_500) = 0.505 whatever the image's size. The noise is elementwise, so
    any layout works: (C, H, W), (B, C, H, W), tiles (B, N, C, H, W), or patch-flattened pixels
    such as Qwen2-VL's (patches, C * T * P * P).

    MFPO noises only the key regions (``mask`` in [0, 1], blended as mask * noised + (1 - mask) *
    x): a mask of the same shape as ``img``, an (H, W) mask, or one (H, W) mask per image of a
    (B, C, H, W) batch. No mask is global noise (its fallback, and the ablation of Table 8). t
    indexes the schedule from 0 as in VCD; t=500 of 1000 is the best setting, sqrt(abar) ~ 0.86.

    Lifting it: copy ``alpha_bar``, ``NOISE_STEPS`` and ``NOISE_STEP`` (mmpo/constants.py) with it;
    it needs ``math`` and ``torch``.
    """
    if not 0 <= t < steps:
        raise ValueError(f"diffusion step t={t} is outside [0, {steps})")
    ab = alpha_bar(steps)[t].item()
    dtype = torch.promote_types(img.dtype, torch.float32)
    x = img.to(dtype)
    eps = torch.randn(img.shape, generator=generator, dtype=torch.float32).to(img.device, dtype)
    noised = math.sqrt(ab) * x + math.sqrt(1 - ab) * eps
    if mask is not None:
        m = torch.as_tensor(mask, dtype=dtype, device=img.device)
        if img.dim() == 4 and m.dim() == 3:  # (B, H, W) -> (B, 1, H, W)
            m = m.unsqueeze(1)
        # pixels outside the mask are returned bit for bit, not recomputed through the blend
        noised = torch.where(m > 0, m * noised + (1 - m) * x, x)
    return noised.to(img.dtype)


def random_region_mask(h: int, w: int, fraction: float = 0.2, generator=None) -> torch.Tensor:
    """A rectangle covering ``fraction`` of an h x w image at a random place and aspect ratio
    in [1/2, 2]: MFPO's "random 20%" ablation (Table 8), noising a region that is not the
    key object. Returns a float mask (H, W) of 0 and 1.

    Lifting it: copy ``_uniform`` with it; it needs ``math`` and ``torch``.
    """
    area = fraction * h * w
    r = math.exp(_uniform(math.log(0.5), math.log(2.0), generator))
    cw = max(1, min(w, round(math.sqrt(area * r))))
    ch = max(1, min(h, round(area / cw)))
    top = int(torch.randint(0, h - ch + 1, (), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (), generator=generator))
    mask = torch.zeros(h, w)
    mask[top:top + ch, left:left + cw] = 1.0
    return mask


def blank(img: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """An image of the same shape filled with ``value`` (0 black, 1 white for [0, 1] images):
    NaPO's image-free generation of language-biased answers, SymMPO's blank-image ablation.

    Lifting it: ``torch`` is all it needs.
    """
    return torch.full_like(img, value)
