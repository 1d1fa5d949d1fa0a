"""MFPO's easy-to-hard curriculum (Jiang et al. 2024, sec. 3.3).

Every example is scored by the mean entropy of the model's predictive distribution over the
tokens of its chosen response (one no-grad pass): a low entropy means the model already finds the
answer easy. Sorted by that score, the data is split into thirds, and training runs on easy,
then medium, then hard (``train.py --curriculum easy-to-hard``). A ``difficulty`` column in the
data is used as it is. Scores are cached next to the data, keyed by a fingerprint of the model
and the data, like the reference cache.
"""
import json
import os

import torch
from tqdm import tqdm

from mmpo import distributed
from mmpo.data import PreferenceDataset, collate
from mmpo.distributed import Dist
from mmpo.logps import response_entropy


def entropy_scores(model, dataset: PreferenceDataset, batch_size: int, pad_id: int, d: Dist = Dist()) -> dict:
    """{id: mean token entropy of the chosen response}, each rank scoring its share."""
    chosen = dataset.with_views(("chosen",))
    loader = torch.utils.data.DataLoader(chosen, batch_sampler=distributed.rank_share(len(chosen), batch_size, d),
                                         collate_fn=lambda ex: collate(ex, ("chosen",), pad_id))
    scores = {}
    was_training = model.training
    model.eval()
    for batch in tqdm(loader, desc="difficulty", disable=not d.main):
        if not distributed.all_ranks_have(len(batch), d):
            continue
        scores.update(zip(batch.ids, response_entropy(model, batch).float().cpu().tolist()))
    model.train(was_training)
    return distributed.merge_dicts(scores, d)


def difficulties(model, dataset: PreferenceDataset, batch_size: int, pad_id: int, fingerprint: str,
                 d: Dist = Dist()) -> dict:
    """{id: difficulty}: the data's own ``difficulty`` column, else cached or fresh entropy scores."""
    if all("difficulty" in r for r in dataset.rows):
        return {r["id"]: float(r["difficulty"]) for r in dataset.rows}
    cache = f"{dataset.path}.difficulty-{fingerprint[:16]}.json"
    if os.path.isfile(cache):
        with open(cache) as f:
            return json.load(f)
    scores = entropy_scores(model, dataset, batch_size, pad_id, d)
    if d.main:
        tmp = cache + ".tmp"
        with open(tmp, "w") as f:
            json.dump(scores, f)
        os.replace(tmp, cache)
    distributed.barrier(d)
    return scores


def stages(ids: list[str], scores: dict, n: int = 3) -> list[list[int]]:
    """Dataset indices sorted by difficulty (ties: data order) and cut into n stages of
    near-equal size, easiest first; an example without a score (skipped) counts as hardest."""
    order = sorted(range(len(ids)), key=lambda i: (scores.get(ids[i], float("inf")), i))
    bounds = [round(k * len(order) / n) for k in range(n + 1)]
    return [order[bounds[k]:bounds[k + 1]] for k in range(n)]
