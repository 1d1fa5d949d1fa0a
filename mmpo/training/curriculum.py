"""Which examples each optimizer step sees: the training schedule (``plan``), and MFPO's
easy-to-hard curriculum (Jiang et al. 2024, sec. 3.3) that orders it.

Every example is scored by the mean entropy of the model's predictive distribution over the
tokens of its chosen response (one no-grad pass): a low entropy means the model already finds the
answer easy. Sorted by that score, the data is split into thirds, trained easy, then medium, then
hard (``train.py --curriculum easy-to-hard``; ``--refresh-ref-per-stage`` makes the policy the
reference at each stage boundary, ``mmpo/reference.py``). A ``difficulty`` column in the data is
used as it is; scores are cached next to the data (``DATA.difficulty-<fingerprint>.json``), keyed
by a fingerprint of the model and the data, like the reference cache.

The score stands in for the paper's "semantic entropy". MFPO cites Farquhar et al. (Nature 2024),
whose semantic entropy samples several answers, clusters them by bidirectional entailment under
an NLI model and takes the entropy over the clusters; but the equation MFPO writes (sec. 3.3) is a
token entropy, H = -sum_i p_i log p_i, and that is what is computed here: the entropy
of the full next-token distribution at each token of the chosen answer, teacher-forced, averaged
over the answer. It was chosen because it takes one no-grad pass of the model being trained, with
no sampling and no second model, and it is deterministic, so its cache stays valid. Farquhar's
form would need N sampled answers per example and an entailment model: compute it elsewhere and
put it in the ``difficulty`` column, which is used as it is.
"""
import json
import os

import torch

from mmpo import distributed
from mmpo.data import PreferenceDataset, collate
from mmpo.distributed import Dist
from mmpo.files import write_atomic
from mmpo.logps import response_entropy
from mmpo.perturb import stable_seed


def entropy_scores(model, dataset: PreferenceDataset, batch_size: int, pad_id: int, d: Dist = Dist()) -> dict:
    """{id: mean token entropy of the chosen response}, each rank scoring its share."""
    was_training = model.training
    model.eval()
    scores = distributed.score_all(dataset.with_views(("chosen",)), batch_size, d,
                                   lambda ex: collate(ex, ("chosen",), pad_id),
                                   lambda b: dict(zip(b.ids, response_entropy(model, b).float().cpu().tolist())),
                                   desc="difficulty")
    model.train(was_training)
    return scores


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
        write_atomic(cache, json.dumps(scores))
    distributed.barrier(d)
    return scores


def stages(ids: list[str], scores: dict, n: int = 3) -> list[list[int]]:
    """Dataset indices sorted by difficulty (ties: data order) and cut into n stages of
    near-equal size, easiest first; an example without a score (skipped) counts as hardest."""
    order = sorted(range(len(ids)), key=lambda i: (scores.get(ids[i], float("inf")), i))
    bounds = [round(k * len(order) / n) for k in range(n + 1)]
    return [order[bounds[k]:bounds[k + 1]] for k in range(n)]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(stable_seed(seed, "epoch", epoch))
    return torch.randperm(n, generator=g).tolist()


def plan(stages: list[list[int]], epochs: int, global_batch: int, seed: int) -> list[tuple[int, int, list[int]]]:
    """Every optimizer step's (stage, epoch, global batch of dataset indices), in training order,
    laid out before the first step. Each stage (the whole data, or the curriculum's thirds) is
    trained for ``epochs`` passes, each a permutation fixed by (seed, stage, epoch) alone: the order
    does not depend on the number of processes, and a resumed run picks up where it stopped. A
    pass's last partial batch is dropped, so every step and every rank sees a full batch."""
    steps = []
    for s, subset in enumerate(stages):
        for e in range(epochs):
            order = [subset[i] for i in epoch_order(len(subset), seed, (s, e))]
            n = len(subset) // global_batch
            steps += [(s, e, order[k * global_batch:(k + 1) * global_batch]) for k in range(n)]
    return steps
