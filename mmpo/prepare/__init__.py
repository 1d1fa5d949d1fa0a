"""Build each method's training data from a preference JSONL: a program, which the library
(mmpo/*.py) never imports.

    python -m mmpo.prepare mfpo   --data IN.jsonl --out DIR   # noise_mask + noise_step: key regions to noise
    python -m mmpo.prepare napo   --data IN.jsonl --out DIR   # lang_biased, vision_biased by the model
    python -m mmpo.prepare symmpo --data IN.jsonl --out DIR   # contrast_image, contrast_chosen

Writes DIR/data.jsonl (every input field kept, image paths absolute, new fields added) and the
new images under DIR/images/, which ``train.py --data DIR/data.jsonl`` reads directly. MFPO's
noise is not baked into an 8-bit image: the row records what defines m' (the region mask and the
diffusion step), and training adds the noise to the model's normalized pixel tensor, as VCD does. The
input is never modified; a killed run, run again, continues where it stopped (command.py: resuming).
Every mistake is one line.

build.py: the three pipelines and ``main``; command.py: the options, their checks, resuming,
model loading and the summary; keywords.py, regions.py: MFPO's keyphrase ranking and region grounding
(the words' tags and stems it reads: mmpo/common/tagging.py). This file imports nothing, so that
``python -m mmpo.prepare --help`` answers at once.
"""
