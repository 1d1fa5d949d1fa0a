"""Convert released datasets to mmpo's JSONL: a program, which the library (mmpo/*.py) never imports.

    python -m mmpo.convert trl   SRC.jsonl OUT    # TRL's vision preference format (plain or conversational)
    python -m mmpo.convert llava SRC.json  OUT --image-folder DIR   # LLaVA's conversations, for --objective sft
    python -m mmpo.convert rlaif-v SRC OUT    # RLAIF-V-Dataset's parquet: a file or a folder of shards (needs pyarrow)

Each writes OUT/data.jsonl and OUT/images/ (the embedded images); see formats.py.
"""
