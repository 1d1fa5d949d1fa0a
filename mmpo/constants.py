"""The names and numbers that the library and the programs share, in one place that imports
nothing (so that ``--help`` and option errors answer before torch loads).
"""
# view -> (which image, which response field). "corrupt" is m': corrupt_image, a perturbation
# made on the fly, or SymMPO's contrast_image.
VIEWS = {
    "chosen": ("image", "chosen"),
    "rejected": ("image", "rejected"),
    "chosen_on_corrupt": ("corrupt", "chosen"),
    "contrast_on_image": ("image", "contrast_chosen"),
    "contrast_on_corrupt": ("corrupt", "contrast_chosen"),
    "rejected_on_corrupt": ("corrupt", "rejected"),
    "lang_biased": ("image", "lang_biased"),
    "vision_biased": ("image", "vision_biased"),
}
TEXT_FIELDS = ("prompt", "chosen", "rejected", "contrast_chosen", "lang_biased", "vision_biased")
IMAGE_FIELDS = ("image", "corrupt_image", "contrast_image", "noise_mask")
# fields that no annotator writes: the pipeline of ``python -m mmpo.prepare`` that makes them
GENERATED_BY = {"lang_biased": "napo", "vision_biased": "napo", "contrast_image": "symmpo", "contrast_chosen": "symmpo"}

# the objectives train.py knows (mmpo/recipes.py's OBJECTIVES, one entry each): named here so that a
# misspelt --objective is refused before torch loads
OBJECTIVE_NAMES = ("dpo", "mdpo", "mfpo", "napo", "symmpo", "sft")

# the second image m': a perturbation of m by name (mmpo.perturb.corrupt), or a real similar image
M_PRIMES = ("crop", "noise", "blank", "contrast")
NOISE_STEPS = 1000  # length of the diffusion schedule (VCD's): t is one of its steps
NOISE_STEP = 500  # VCD's and MFPO's t

# random models built from config (mmpo/tiny.py): nothing is downloaded
TINY_MODELS = ("tiny-llava", "tiny-qwen2vl", "tiny-idefics3")
# generation when no length or width is given: the papers' (NaPO's released 1024 tokens and 3 beams;
# 1024 in published CHAIR evaluations) for real models, and a quick look for the random tiny ones
# (on a CPU, 1024 tokens of 3 beams take minutes a batch even there)
PAPER_NEW_TOKENS, PAPER_BEAMS = 1024, 3
TINY_NEW_TOKENS, TINY_BEAMS = 32, 1

# how log-probs are scored by default (mmpo/logps.py): prefix sharing on, 256 response positions a chunk
SHARE_PREFIX = True
LOGPS_CHUNK = 256
