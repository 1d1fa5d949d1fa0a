"""Convert released datasets to mmpo's JSONL: a program, which the library (mmpo/*.py) never imports.

    python -m mmpo.convert trl   SRC.jsonl OUT    # TRL's vision preference format (plain or conversational)
    python -m mmpo.convert llava SRC.json  OUT --image-folder DIR   # LLaVA's conversations, for --objective sft
    python -m mmpo.convert pope coco_pope_random.json OUT --image-folder val2014   # POPE, for eval.py --bench pope
    python -m mmpo.convert coco-chair annotations/ OUT --image-folder val2014/     # CHAIR, for eval.py --bench chair
    python -m mmpo.convert rlaif-v RLAIF-V-Dataset/ OUT    # RLAIF-V's parquet shards (a file or their folder; needs pyarrow)
    python -m mmpo.convert rlhf-v RLHF-V-Dataset.parquet OUT   # RLHF-V's corrections (MFPO's text preferences)
    python -m mmpo.convert mdpo vlfeedback_llava_10k.json OUT --image-folder merged_images   # mDPO's pairs
    python -m mmpo.convert napo RLAIF-V-Bias-Dataset/ OUT   # NaPO's parquet shards: + lang_biased, vision_biased
    python -m mmpo.convert symmpo SymMPO_Dataset/ OUT       # SymMPO's parquet: + contrast_image, contrast_chosen

Each writes OUT/data.jsonl and OUT/images/ (the embedded images); see command.py, formats.py,
papers.py and coco.py.
"""
