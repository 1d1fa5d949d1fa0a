"""The released preference data as mmpo's rows, for ``python -m mmpo.convert`` (formats.py holds
what the formats share: the images, the row numbers, the parquet reader). The schemas, with where
they were read:

- ``rlaif-v``: RLAIF-V-Dataset (huggingface.co/datasets/openbmb/RLAIF-V-Dataset: its card's
  dataset_info and "Data fields"; github.com/RLHF-V/RLAIF-V, muffin/data/datasets.py, which reads
  it; TRL's examples/datasets/rlaif-v.py, which makes HuggingFaceH4/rlaif-v_formatted from it).
  Parquet, released as numbered shards (RLAIF-V-Dataset_000.parquet, ...). Columns, all strings but
  ``image``: ``ds_name``, ``image`` (HF datasets' Image feature: a struct {bytes, path}, the bytes
  the image file), ``question`` (the prompt; no "<image>" marker), ``chosen``, ``rejected``,
  ``origin_dataset``, ``origin_split`` (JSON text: the models that wrote and judged the answers, the
  question type), ``idx`` (the source question's index) and ``image_path``. RLAIF-V's pair builder
  (data_engine/pipeline/dpo_reward_pipeline/data_pair_builder.py) gives every pair built from one
  question that question's idx: repeats are expected. ``origin_dataset``, ``origin_split`` and
  ``image_path`` are kept as they are (mmpo reads no such field).
- ``rlhf-v``: RLHF-V-Dataset, the human corrections MFPO starts from (huggingface.co/datasets/
  openbmb/RLHF-V-Dataset, its card's dataset_info and "Data fields"): one parquet file,
  RLHF-V-Dataset.parquet, of {"ds_name", "image" ({"bytes", "path"}), "text", "origin_dataset",
  "origin_split", "idx" (a number), "image_path"}, where ``text`` is JSON text {"question",
  "chosen", "rejected"}.
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
"""
import json
import os
import re

from mmpo.cli import first_line
from mmpo.convert.formats import Malformed, count_id, embedded, json_list_rows, parquet_rows, shown, text

# ---- RLAIF-V -----------------------------------------------------------------------------------

PROVENANCE = ("origin_dataset", "origin_split", "image_path")  # kept as released


def rlaif_v_rows(src: str):
    return parquet_rows(src, "rlaif-v", ("image", "question", "chosen", "rejected"), PROVENANCE)


def rlaif_v_row(src: dict, ctx) -> dict:
    answers = {"prompt": text(src, "question"), "chosen": text(src, "chosen"), "rejected": text(src, "rejected")}
    row = {"image": embedded(src, "image", ctx), **answers}  # the texts first: no image kept for a skipped row
    count_id(src, ctx)
    return {**row, **{k: src[k] for k in PROVENANCE if isinstance(src.get(k), str) and src[k]}}


def rlhf_v_rows(src: str):
    return parquet_rows(src, "rlhf-v", ("image", "text"), PROVENANCE)


def rlhf_v_row(src: dict, ctx) -> dict:
    try:
        pair = json.loads(src.get("text"))
    except (TypeError, ValueError) as e:
        raise Malformed(f"field 'text': must be JSON text {{question, chosen, rejected}} ({first_line(e)})") from None
    if not isinstance(pair, dict):
        raise Malformed(f"field 'text': must hold a JSON object {{question, chosen, rejected}}, got {shown(pair)}")
    return rlaif_v_row({**src, **{k: pair.get(k) for k in ("question", "chosen", "rejected")}}, ctx)


# ---- mDPO --------------------------------------------------------------------------------------

# Bunny's (and LLaVA's llava_v1) template around one user turn; the question is what it wraps
TEMPLATE = re.compile(r"USER:\s*(.*?)\s*ASSISTANT:\s*$", re.DOTALL)


def mdpo_rows(path: str):
    return json_list_rows(path, "mDPO's pairs")


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
    return parquet_rows(src, "napo", ("image", "question", "chosen", "rejected", "question_only", "image_only"))


def napo_row(src: dict, ctx) -> dict:
    answers = {"prompt": text(src, "question"), "chosen": text(src, "chosen"), "rejected": text(src, "rejected"),
               "lang_biased": text(src, "question_only"), "vision_biased": text(src, "image_only")}
    row = {"image": embedded(src, "image", ctx), **answers}  # the texts first: no image kept for a skipped row
    count_id(src, ctx)
    return row


# ---- SymMPO ------------------------------------------------------------------------------------

def symmpo_rows(src: str):
    return parquet_rows(src, "symmpo", ("image_1", "image_2", "question", "resp_1_w", "resp_1_l", "resp_2_w"))


def symmpo_row(src: dict, ctx) -> dict:
    answers = {"prompt": text(src, "question"), "chosen": text(src, "resp_1_w"), "rejected": text(src, "resp_1_l"),
               "contrast_chosen": text(src, "resp_2_w")}
    row = {"image": embedded(src, "image_1", ctx), "contrast_image": embedded(src, "image_2", ctx), **answers}
    count_id(src, ctx)
    return row


FORMATS = {"rlaif-v": (rlaif_v_rows, rlaif_v_row), "rlhf-v": (rlhf_v_rows, rlhf_v_row),
           "mdpo": (mdpo_rows, mdpo_row), "napo": (napo_rows, napo_row),
           "symmpo": (symmpo_rows, symmpo_row)}
