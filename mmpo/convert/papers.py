"""The three papers' released preference data as mmpo's rows, for ``python -m mmpo.convert``
(formats.py runs the FORMATS here beside its own; the images, the row numbers, resuming and the
lock are its). The schemas, with where they were read:

- ``mdpo``: mDPO's 10k VLFeedback pairs (HF dataset fwnlp/mDPO-preference-data,
  vlfeedback_llava_10k.json, the file bunny/config.yaml names; github.com/luka-group/mDPO).
  One JSON list, read whole as LLaVA's, of {"img_path", "prompt", "chosen", "rejected"}
  (data/sample_data.json; bunny/data_collator_bunny_phi.py reads these four fields). The prompt
  holds Bunny's chat template, "A chat between ... USER: <image>\\nQ ASSISTANT:": the question Q
  alone is kept, since mmpo writes each model's own template. The dataset holds no images:
  they are VLFeedback's (MMInstruction/VLFeedback, merged_images.zip, files {id}.jpg); give
  --image-folder the unpacked merged_images/. img_path is looked up there as written
  ("images/llava-reasoning-3730.jpg" in the sample), then by its file name alone: code using the
  release joins one or the other to merged_images/, and which the file holds is not documented.
- ``napo``: NaPO's RLAIF-V-Bias (HF dataset Starrrrrry/RLAIF-V-Bias-Dataset, its card;
  github.com/zhangzef/NaPO, muffin/data/bias_datasets_trainer.py RLAIFVBiasDataset). Parquet
  shards (RLAIF-V-Dataset-000-11.parquet, ...) of RLAIF-V's columns {"ds_name", "image"
  ({"bytes", "path"}), "question", "chosen", "rejected", "origin_dataset", "origin_split",
  "idx", "image_path"} plus the two answers LLaVA-1.5-7B generated (muffin/eval/
  llava15_gen_bias_data.py): "question_only" (no image: language-biased) -> ``lang_biased``,
  and "image_only" (the image and no question: vision-biased) -> ``vision_biased``. The script
  makes three question-only variants (no image, white, black); which one the release's
  question_only is, is not said. Nor which answers hit its 1024-token limit: no ``truncated``.
- ``symmpo``: SymMPO's data (HF dataset Tanh01/SymMPO_Dataset; github.com/Liuwq-bit/SymMPO,
  whose demo shard demo_data/similar/SymMPO-similar_image_Dataset_000-500.parquet was removed in
  commit 31180cb). Parquet of the fields its loader reads (muffin/data/datasets.py
  SymMPODataset): {"question", "image_1", "image_2" (each {"bytes", "path"}), "resp_1_w",
  "resp_1_l", "resp_2_w", "resp_2_l", "idx", "origin_dataset", "origin_split", "image_path_1",
  "image_path_2"}. image_1 is m and image_2 the similar image m' -> ``contrast_image``;
  resp_1_w / resp_1_l are chosen / rejected on m, and resp_2_w, the preferred answer for m', is
  ``contrast_chosen`` (muffin/eval/muffin_inference_logp.py scores resp_2_w on both images and
  resp_1_w on image_2). resp_2_l is dropped: SymMPO's loss never reads it
  (muffin/train/train_utils.py leaves it commented out).

Parquet needs pyarrow (``pip install pyarrow``; HF datasets depends on it); it is read a batch
at a time, and SRC may be one shard or the folder of them, read in name order, rows named
"N of SHARD" there. The id is ``idx`` where the release has one, else the row number.
"""
import json
import os
import re

from mmpo.cli import UserError, first_line
from mmpo.convert.formats import Malformed, image_path, shown

PARQUET_FORMATS = ("napo", "symmpo")  # SRC may be a folder of shards
BATCH = 16  # rows in memory at a time: each carries one or two embedded images


def parquet_files(src: str) -> list[str]:
    """SRC itself, or a folder's *.parquet in name order (HF's shards sort in their order)."""
    if not os.path.isdir(src):
        return [src]
    files = sorted(os.path.join(src, n) for n in os.listdir(src) if n.endswith(".parquet"))
    if not files:
        raise UserError(f"{src}: a folder with no .parquet file")
    return files


def parquet_rows(src: str, columns: tuple[str, ...]):
    """(row number, row) of every shard, one batch at a time. The columns a format reads are
    checked once per shard: a file of another dataset is one error, not a line per row."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading parquet needs pyarrow: pip install pyarrow") from None
    files = parquet_files(src)
    for path in files:
        try:
            shard = pq.ParquetFile(path)
        except Exception as e:  # pyarrow's ArrowInvalid, OSError: not a parquet file
            raise UserError(f"{path}: cannot read it as parquet ({first_line(e)})") from None
        missing = [c for c in columns if c not in shard.schema_arrow.names]
        if missing:
            raise UserError(f"{path}: no column {', '.join(missing)} (it has {', '.join(shard.schema_arrow.names)})")
        n = 0
        for batch in shard.iter_batches(batch_size=BATCH):
            for row in batch.to_pylist():
                n += 1
                yield (n if len(files) == 1 else f"{n} of {os.path.basename(path)}"), row


def with_idx(rows):
    """The releases' own id, ``idx``, as the row's id."""
    for n, row in rows:
        yield n, ({"id": row["idx"], **row} if isinstance(row, dict) and row.get("idx") is not None else row)


def text(src: dict, field: str) -> str:
    value = src.get(field)
    if not isinstance(value, str) or not value.strip():
        raise Malformed(f"field '{field}': must be a non-empty string, got {shown(value)}")
    return value


def embedded(src: dict, field: str, ctx) -> str:
    try:
        return image_path(src.get(field), ctx)
    except Malformed as e:
        raise Malformed(f"field '{field}': {e}") from None


# ---- mDPO --------------------------------------------------------------------------------------

# Bunny's (and LLaVA's llava_v1) template around one user turn; the question is what it wraps
TEMPLATE = re.compile(r"USER:\s*(.*?)\s*ASSISTANT:\s*$", re.DOTALL)


def mdpo_rows(path: str):
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except ValueError as e:
        raise UserError(f"{path}: not a JSON file ({first_line(e)}); mDPO's data is one JSON list") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of mDPO's pairs, got a {type(data).__name__}")
    yield from enumerate(data, 1)


def mdpo_row(src: dict, ctx) -> dict:
    prompt = text(src, "prompt")
    match = TEMPLATE.search(prompt)
    question = (match.group(1) if match else prompt).replace("<image>", "").strip()
    if not question:
        raise Malformed(f"field 'prompt': no question in it, got {shown(prompt)}")
    return {"image": vlfeedback_image(src.get("img_path"), ctx), "prompt": question,
            "chosen": text(src, "chosen"), "rejected": text(src, "rejected")}


def vlfeedback_image(path, ctx) -> str:
    if not isinstance(path, str) or not path.strip():
        raise Malformed(f"field 'img_path': must be a path, got {shown(path)}")
    folder = ctx["image_folder"]
    for name in (path, os.path.basename(path)):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.abspath(os.path.join(folder, name))
    raise Malformed(f"field 'img_path': image file not found: {os.path.join(folder, path)} "
                    f"(nor {os.path.basename(path)} in --image-folder)")


# ---- NaPO --------------------------------------------------------------------------------------

def napo_rows(src: str):
    yield from with_idx(parquet_rows(src, ("image", "question", "chosen", "rejected", "question_only", "image_only")))


def napo_row(src: dict, ctx) -> dict:
    answers = {"prompt": text(src, "question"), "chosen": text(src, "chosen"), "rejected": text(src, "rejected"),
               "lang_biased": text(src, "question_only"), "vision_biased": text(src, "image_only")}
    return {"image": embedded(src, "image", ctx), **answers}  # the texts first: no image kept for a skipped row


# ---- SymMPO ------------------------------------------------------------------------------------

def symmpo_rows(src: str):
    yield from with_idx(parquet_rows(src, ("image_1", "image_2", "question", "resp_1_w", "resp_1_l", "resp_2_w")))


def symmpo_row(src: dict, ctx) -> dict:
    answers = {"prompt": text(src, "question"), "chosen": text(src, "resp_1_w"), "rejected": text(src, "resp_1_l"),
               "contrast_chosen": text(src, "resp_2_w")}
    return {"image": embedded(src, "image_1", ctx), "contrast_image": embedded(src, "image_2", ctx), **answers}


FORMATS = {"mdpo": (mdpo_rows, mdpo_row), "napo": (napo_rows, napo_row), "symmpo": (symmpo_rows, symmpo_row)}
