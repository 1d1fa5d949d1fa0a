"""MFPO's region mapping (sec. 3.1): keyphrases -> image regions, with an open-vocabulary detector
(OWLv2 / OWL-ViT / Grounding DINO) for boxes and a segmenter (SAM) for masks inside them.

The mask of a keyword is the segmenter's mask clipped to its box (the box itself when the
segmenter finds nothing there, or when no segmenter is given); the region mask of an image is
the union over its keywords. Models are anything transformers loads for zero-shot detection
and mask generation; model names are options of ``python -m mmpo.prepare mfpo``.
"""
from dataclasses import dataclass

import torch
from PIL import Image


@dataclass
class Grounding:
    detector: torch.nn.Module
    detector_processor: object
    segmenter: torch.nn.Module | None = None
    segmenter_processor: object = None
    threshold: float = 0.1


def load_detector(name: str, device="cpu"):
    """An open-vocabulary detector and its processor, by hub id or local directory."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
    return AutoModelForZeroShotObjectDetection.from_pretrained(name).to(device).eval(), AutoProcessor.from_pretrained(name)


def load_segmenter(name: str, device="cpu"):
    """A box-prompted segmenter (SAM) and its processor, by hub id or local directory."""
    from transformers import AutoModelForMaskGeneration, AutoProcessor
    return AutoModelForMaskGeneration.from_pretrained(name).to(device).eval(), AutoProcessor.from_pretrained(name)


@torch.no_grad()
def detect(g: Grounding, image: Image.Image, keywords: list[str]) -> torch.Tensor:
    """Boxes (n, 4) as x0, y0, x1, y1 pixels of ``image`` for any of the keywords. Each keyword
    is one text query, whole: a keyphrase asks for "traffic light", never for "traffic"."""
    w, h = image.size
    inputs = g.detector_processor(text=[keywords], images=[image], return_tensors="pt", padding=True)
    out = g.detector(**inputs.to(g.detector.device))
    # OWLv2 pads images to a square before detecting: its boxes are in the square's frame
    side = max(w, h) if type(g.detector).__name__.startswith("Owlv2") else None
    size = [(side, side) if side else (h, w)]
    found = g.detector_processor.post_process_grounded_object_detection(out, threshold=g.threshold, target_sizes=size)[0]
    boxes = found["boxes"].float().cpu().reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    return boxes[keep]


def box_mask(box, h: int, w: int) -> torch.Tensor:
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = 1.0
    return m


@torch.no_grad()
def region_mask(g: Grounding, image: Image.Image, keywords: list[str]) -> torch.Tensor | None:
    """The union of the keywords' regions, a float mask (H, W) of 0/1; None if none was found."""
    if not keywords:
        return None
    boxes = detect(g, image, keywords)
    if not len(boxes):
        return None
    w, h = image.size
    masks = boxes_masks = torch.stack([box_mask(b, h, w) for b in boxes])  # (n, H, W)
    if g.segmenter is not None:
        inputs = g.segmenter_processor(images=[image], input_boxes=[boxes.tolist()], return_tensors="pt")
        out = g.segmenter(**inputs.to(g.segmenter.device), multimask_output=False)
        seg = g.segmenter_processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu())[0]  # (n, 1, H, W)
        seg = seg[:, 0].float() * boxes_masks  # nothing outside its box
        empty = seg.flatten(1).sum(1) == 0
        masks = torch.where(empty[:, None, None], boxes_masks, seg)
    return masks.amax(0)
