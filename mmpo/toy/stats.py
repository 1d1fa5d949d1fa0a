"""95% intervals for the toy's tables: a two-level bootstrap over seeds and examples.

A seed is one SFT base and the preference runs from it, so the spread of a figure has two
sources: which base (and run) came out, and which test examples were drawn. Each replicate
draws the seeds with replacement and, for every seed drawn, that seed's examples with
replacement; a figure is computed on the pooled replicate exactly as on the real data. The
interval is the 2.5th and 97.5th percentiles over the replicates.

Every column (the base and each method) sees the *same* replicates, so a difference between
two columns (a method against the base, or against DPO) has its own interval: when it holds 0,
the difference is inside the noise.

Every figure is a function of sums over examples (an accuracy is a count over a count, CHAIR_i
hallucinated objects over mentioned ones), so a replicate is a weighted sum: one matrix product
for all replicates at once.
"""
import torch

REPS = 2000


def replicates(n_seeds: int, sizes: dict[str, int], reps: int = REPS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights ``(reps, n_seeds, n)`` for each source of examples (``sizes``: its example count per
    seed): how often each example of each seed is in each replicate. The seeds drawn are shared by
    the sources (a replicate's test answers and held-out pairs come from the same models)."""
    g = torch.Generator().manual_seed(seed)
    drawn = torch.randint(n_seeds, (reps, n_seeds), generator=g)  # each replicate's seeds
    out = {}
    for source, n in sizes.items():
        w = torch.zeros(reps, n_seeds, n, dtype=torch.float64)
        for j in range(n_seeds):  # the j-th seed drawn brings a resample of its own examples
            counts = torch.zeros(reps, n, dtype=torch.float64).scatter_add_(
                1, torch.randint(n, (reps, n), generator=g), torch.ones(reps, n, dtype=torch.float64))
            w[torch.arange(reps), drawn[:, j]] += counts
        out[source] = w
    return out


def sums(values: dict[str, torch.Tensor], weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each quantity's weighted sum per replicate: ``values[q]`` is ``(n_seeds, n)``."""
    return {q: torch.einsum("rkn,kn->r", weights, v.to(weights.dtype)) for q, v in values.items()}


def point(fn, values: dict[str, dict[str, torch.Tensor]]) -> float:
    """``fn`` (sums by source -> a figure) on the data itself: every example of every seed once."""
    return float(fn({s: {q: v.double().sum().view(1) for q, v in qs.items()} for s, qs in values.items()})[0])


def figure_and_interval(fn, values: dict[str, dict[str, torch.Tensor]], weights: dict[str, torch.Tensor]):
    """``fn`` on the data itself, and on every replicate."""
    return point(fn, values), fn({s: sums(v, weights[s]) for s, v in values.items()})


def by_seed(fn, values: dict[str, dict[str, torch.Tensor]]) -> list[float]:
    """``fn`` on each seed's examples alone: the figure each base and its runs gave."""
    n_seeds = len(next(iter(next(iter(values.values())).values())))
    return [point(fn, {s: {q: v[k] for q, v in qs.items()} for s, qs in values.items()}) for k in range(n_seeds)]


def interval(reps: torch.Tensor) -> tuple[float, float]:
    """The 95% percentile interval of the replicates (NaN ones left out: a count of 0 drawn)."""
    reps = reps[~torch.isnan(reps)]
    if not len(reps):
        return float("nan"), float("nan")
    lo, hi = torch.quantile(reps.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi
