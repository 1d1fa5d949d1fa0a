"""Convert released datasets to mmpo's JSONL: a program, which the library (mmpo/*.py) never imports.

    python -m mmpo.convert trl   SRC.jsonl OUT    # TRL's vision preference format (plain or conversational)
    python -m mmpo.convert llava SRC.json  OUT --image-folder DIR   # LLaVA's conversations, for --objective sft
    python -m mmpo.convert coco-chair annotations/ OUT --image-folder val2014/   # eval.py --bench chair rows

Each writes OUT/data.jsonl and OUT/images/ (the embedded images); see formats.py (and coco.py).
"""
