"""The one place where pixels cross between PIL and torch: any image file in as RGB, and an
image tensor to and from 8 bits."""
import torch
from PIL import Image


def load_image(path: str) -> Image.Image:
    """Open any image as RGB: palette, alpha, grayscale, CMYK and 16-bit images included."""
    img = Image.open(path)
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = img.convert("I").point(lambda v: v / 256).convert("L")  # 16-bit -> 8-bit
    elif img.mode == "F":
        img = img.point(lambda v: v * 255).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
        return background
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image (as ``load_image`` gives) -> float (3, H, W) in [0, 1]."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode} (load_image converts any image)")
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
    return x.permute(2, 0, 1).float() / 255


def to_pil(x: torch.Tensor) -> Image.Image:
    """A float image in [0, 1] -> 8 bits: (3, H, W) as RGB, (H, W) as grayscale (a region mask).
    Values outside [0, 1] (noise) are clamped, then rounded to the nearest level."""
    y = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if y.dim() == 2:
        return Image.frombytes("L", (y.shape[1], y.shape[0]), y.contiguous().numpy().tobytes())
    y = y.permute(1, 2, 0).contiguous()  # (H, W, 3)
    return Image.frombytes("RGB", (y.shape[1], y.shape[0]), y.numpy().tobytes())
