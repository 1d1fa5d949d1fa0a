"""The corrupted-image generators: statistics, masks, reproducibility, shapes and dtypes."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import check_lift
from mmpo import perturb as P


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_crop_box_area_and_ratio_within_bounds():
    g = gen(1)
    for _ in range(300):
        top, left, ch, cw = P.crop_box(96, 128, area=(0.01, 0.2), generator=g)
        frac = ch * cw / (96 * 128)
        # rounding to whole pixels moves the area a little off the sampled fraction
        assert 0.008 <= frac <= 0.21
        assert 3 / 4 - 0.1 <= cw / ch <= 4 / 3 + 0.1
        assert 0 <= top and top + ch <= 96 and 0 <= left and left + cw <= 128


@pytest.mark.parametrize("h, w, area, want", [
    (32, 36, (1.5, 2.0), (0, 0, 32, 36)),  # no box of 150-200% fits: the whole image (w/h = 1.125 is within bounds)
    (100, 10, (1.5, 2.0), (43, 0, 13, 10)),  # too tall: full width, height round(10 / (3/4)) = 13, centred
    (2, 1000, (0.01, 0.2), (0, 498, 2, 3)),  # mDPO's own bounds: every box of >= 20 px is >= 4 px tall, so all 10
])                                           # tries miss; full height, width round(2 * 4/3) = 3, left (1000-3)//2
def test_crop_box_falls_back_as_torchvision_does(h, w, area, want):
    """When all ten tries miss, RandomResizedCrop (mDPO's crop) takes the whole image, or the
    largest centred box at the nearer ratio bound: the same box as torchvision's own get_params."""
    from torchvision.transforms import RandomResizedCrop
    assert P.crop_box(h, w, area=area, generator=gen(3)) == want
    assert RandomResizedCrop.get_params(torch.zeros(3, h, w), scale=list(area), ratio=[3 / 4, 4 / 3]) == want


def test_random_crop_is_the_resized_box():
    img = torch.rand(3, 32, 48)
    top, left, ch, cw = P.crop_box(32, 48, area=(0.2, 0.5), generator=gen(7))
    want = F.interpolate(img[None, :, top:top + ch, left:left + cw], size=(32, 48), mode="bilinear")[0]
    out = P.random_crop(img, area=(0.2, 0.5), generator=gen(7))
    assert out.shape == img.shape
    assert torch.allclose(out, want)


def test_random_crop_batch_gets_independent_boxes_and_keeps_dtype():
    img = torch.rand(1, 3, 32, 32).repeat(4, 1, 1, 1).to(torch.bfloat16)
    out = P.random_crop(img, generator=gen(3))
    assert out.dtype == torch.bfloat16 and out.shape == img.shape
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("fn", [
    lambda x, g: P.random_crop(x, generator=g),
    lambda x, g: P.diffusion_noise(x, t=500, generator=g),
])
def test_same_seed_same_output(fn):
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(fn(x, gen(5)), fn(x, gen(5)))
    assert not torch.equal(fn(x, gen(5)), fn(x, gen(6)))


def test_alpha_bar_matches_vcd_schedule():
    ab = P.alpha_bar(1000)
    betas = [1 / (1 + math.exp(-(-6 + 12 * i / 999))) * (5e-3 - 1e-5) + 1e-5 for i in range(3)]
    assert ab[2].item() == pytest.approx((1 - betas[0]) * (1 - betas[1]) * (1 - betas[2]), rel=1e-12)
    assert math.sqrt(ab[500].item()) == pytest.approx(0.86, abs=0.005)
    assert torch.all(ab[1:] < ab[:-1])  # more noise at every step


def test_diffusion_noise_variance_matches_schedule():
    t = 500
    ab = P.alpha_bar()[t].item()
    x = torch.full((3, 256, 256), 0.5)
    out = P.diffusion_noise(x, t=t, generator=gen(0))
    assert out.mean().item() == pytest.approx(math.sqrt(ab) * 0.5, abs=0.005)
    assert out.var().item() == pytest.approx(1 - ab, rel=0.01)


def test_diffusion_noise_masked_only_inside():
    x = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(32, 32)
    mask[4:20, 8:24] = 1
    out = P.diffusion_noise(x, t=999, mask=mask, generator=gen(2))
    outside = mask == 0
    assert torch.equal(out[..., outside], x[..., outside])
    assert (out[..., ~outside] - x[..., ~outside]).abs().mean() > 0.3


def test_diffusion_noise_per_image_masks_and_dtype():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    masks = torch.zeros(2, 8, 8)
    masks[0, :4] = 1  # top half of the first image, nothing of the second
    out = P.diffusion_noise(x, mask=masks, generator=gen(0))
    assert out.dtype == torch.float64
    assert torch.equal(out[1], x[1]) and torch.equal(out[0, :, 4:], x[0, :, 4:])
    assert not torch.equal(out[0, :, :4], x[0, :, :4])


def test_diffusion_noise_rejects_bad_step():
    with pytest.raises(ValueError, match="t=1000"):
        P.diffusion_noise(torch.zeros(3, 4, 4), t=1000)


def test_random_region_mask_fraction():
    g = gen(4)
    for _ in range(50):
        m = P.random_region_mask(64, 64, fraction=0.2, generator=g)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert m.mean().item() == pytest.approx(0.2, abs=0.02)
    a = P.random_region_mask(64, 64, generator=gen(9))
    assert torch.equal(a, P.random_region_mask(64, 64, generator=gen(9)))


def test_blank_keeps_shape_dtype():
    x = torch.rand(2, 3, 5, 5, dtype=torch.float16)
    w = P.blank(x, 1.0)
    assert w.shape == x.shape and w.dtype == torch.float16 and bool((w == 1).all())
    assert bool((P.blank(x[0]) == 0).all())


def test_single_image_and_batch_agree():
    x = torch.rand(3, 16, 16)
    single = P.diffusion_noise(x, generator=gen(0))
    batch = P.diffusion_noise(x[None], generator=gen(0))[0]
    assert torch.equal(single, batch)
    with pytest.raises(ValueError, match="expected an image"):
        P.random_crop(torch.zeros(16, 16))


# ---- corrupt: the one entry point, by the names the flags use (crop, noise, blank) ----------

def test_corrupt_blank_is_zeros_or_the_given_value():
    x = torch.rand(3, 20, 30)
    assert torch.equal(P.corrupt(x, "blank"), torch.zeros(3, 20, 30))
    assert torch.equal(P.corrupt(x, "blank", value=1.0), torch.ones(3, 20, 30))  # NaPO's white image


def test_corrupt_crop_is_random_crop_from_the_same_generator_state():
    x = torch.rand(3, 24, 40)
    g = gen(11)
    assert torch.equal(P.corrupt(x, "crop", g), P.random_crop(x, generator=gen(11)))
    # the generator moved on: the next crop from it is another one
    assert not torch.equal(P.corrupt(x, "crop", g), P.random_crop(x, generator=gen(11)))


def test_corrupt_noise_acts_on_pixels_scaled_to_minus_one_one():
    """For an image in [0, 1], noise at step t is diffusion_noise on 2x - 1, mapped back: in [0, 1]
    units the residual m' - (sqrt(abar) (2m - 1) + 1) / 2 has standard deviation sqrt(1 - abar) / 2."""
    t = 500
    ab = P.alpha_bar()[t].item()
    x = torch.rand(3, 256, 256, generator=gen(1))
    out = P.corrupt(x, "noise", gen(2), t=t)
    residual = out - (math.sqrt(ab) * (2 * x - 1) + 1) / 2
    assert residual.mean().item() == pytest.approx(0, abs=0.005)
    assert residual.std().item() == pytest.approx(math.sqrt(1 - ab) / 2, rel=0.01)  # 0.25 at t = 500
    less = P.corrupt(x, "noise", gen(2), t=100)
    assert (less - x).abs().mean() < (out - x).abs().mean()  # an earlier step, less noise


def test_corrupt_names_its_kinds_on_a_wrong_one():
    with pytest.raises(ValueError, match="unknown corruption 'black': choose crop, noise or blank"):
        P.corrupt(torch.zeros(3, 4, 4), "black")


def test_training_noise_is_corrupt_on_the_normalized_pixels():
    """Training's m' for noise: ``corrupt(..., normalized=True)`` is VCD's noise on the processor's
    normalized tensor as it is, within a mask when given (no [-1, 1] rescaling)."""
    x = torch.randn(3, 8, 8)
    mask = torch.zeros(8, 8)
    mask[:4] = 1
    out = P.corrupt(x, "noise", gen(5), t=500, mask=mask, normalized=True)
    assert torch.equal(out, P.diffusion_noise(x, t=500, mask=mask, generator=gen(5)))
    assert torch.equal(out[:, 4:], x[:, 4:])


def test_corrupt_copied_alone_runs_with_nothing_but_torch():
    """What its docstring says to copy, executed from source in a namespace holding only torch and
    F, gives the package's m' for every kind."""
    import inspect
    names = ["NOISE_STEPS", "NOISE_STEP", "random_crop", "crop_box", "_batched", "_uniform", "diffusion_noise", "alpha_bar", "blank"]
    for name in names:
        assert f"``{name}``" in P.corrupt.__doc__
    space = {"torch": torch, "F": F}
    exec(f"import math\nNOISE_STEPS = {P.NOISE_STEPS}\nNOISE_STEP = {P.NOISE_STEP}", space)  # math: the standard library, as crop_box uses it
    for name in names[2:] + ["corrupt"]:
        exec(inspect.getsource(getattr(P, name)), space)
    x = torch.rand(2, 3, 16, 16)
    for kind, kw in [("crop", {}), ("noise", {"t": 300}), ("noise", {"normalized": True}), ("blank", {"value": 1.0})]:
        assert torch.equal(space["corrupt"](x, kind, gen(3), **kw), P.corrupt(x, kind, gen(3), **kw)), kind


# ---- each perturbation lifted alone: its source, run with exactly the names its docstring lists --

def test_each_perturbation_copied_alone_runs_with_exactly_the_names_it_lists():
    x = torch.rand(3, 20, 30)
    mask = P.random_region_mask(20, 30, generator=gen(5))

    def calls(fn):
        name = fn.__name__
        if name == "corrupt":  # every kind, batched and not, with and without a region
            return [fn(x, "crop", gen(1)), fn(x[None], "crop", gen(1)), fn(x, "noise", gen(2), mask=mask),
                    fn(x, "noise", gen(2), normalized=True), fn(x, "blank", value=1.0)]
        if name == "random_crop":
            return [fn(x, generator=gen(1)), fn(x[None], generator=gen(1))]
        if name == "diffusion_noise":
            return [fn(x, generator=gen(2)), fn(x, t=100, mask=mask, generator=gen(2))]
        if name == "random_region_mask":
            return [fn(20, 30, generator=gen(3))]
        return [fn(x, 0.5)]
    for fn in (P.corrupt, P.random_crop, P.diffusion_noise, P.random_region_mask, P.blank):
        check_lift(fn, calls)
