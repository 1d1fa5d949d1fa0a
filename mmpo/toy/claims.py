"""The toy's reading as code: each claim a function of a run's results (results.json), with the
figures it reads, its direction and its threshold written down, so that every run says which
claims held (results.md ends with them) and the README can quote only those that held in every
setting run (mmpo/toy/RESULTS.md).

Two thresholds, fixed for every claim: *at chance* means the 95% interval of an accuracy holds 0.5;
*beyond the noise* means the 95% interval of a difference excludes 0 (``results.collect``'s
differences), or, for two figures without a difference interval, that their intervals do not
overlap. A claim about a method the run did not train is "not run".
"""
from typing import Callable, NamedTuple


class Claim(NamedTuple):
    world: str
    text: str  # what it says, threshold included
    reads: Callable[[dict], dict]  # the world's results -> {figure: [point, low, high]}, KeyError: not run
    holds: Callable[[dict], bool]  # those figures -> held?


def _fig(method: str, key: str):
    return lambda r: r["figures"][method][key]


def _diff(pair: str, key: str):
    return lambda r: r["differences"][pair][key]


def below(x) -> bool:  # a difference below 0 beyond the noise
    return x[2] < 0


def above(x) -> bool:
    return x[1] > 0


CLAIMS = [
    Claim("colour", "DPO's held-out reward accuracy is above blind DPO's (trained on black images), their intervals "
                    "apart",
          lambda r: {"DPO": _fig("dpo", "heldout_reward_acc")(r), "blind DPO": _fig("dpo-noimage", "heldout_reward_acc")(r)},
          lambda f: f["DPO"][1] > f["blind DPO"][2]),
    Claim("captions", "DPO's held-out reward accuracy is at chance (its interval holds 0.5)",
          lambda r: {"DPO": _fig("dpo", "heldout_reward_acc")(r)},
          lambda f: f["DPO"][1] <= 0.5 <= f["DPO"][2]),
    Claim("captions", "DPO's coverage is below the base's beyond the noise (it learns the length shortcut)",
          lambda r: {"DPO − base": _diff("dpo - base", "coverage")(r)},
          lambda f: below(f["DPO − base"])),
    Claim("captions", "SymMPO's coverage is not below the base's beyond the noise",
          lambda r: {"SymMPO − base": _diff("symmpo - base", "coverage")(r)},
          lambda f: not below(f["SymMPO − base"])),
    Claim("captions", "no preference method's CHAIR_i is above the base's beyond the noise",
          lambda r: {f"{r['labels'][p.split(' - ')[0]]} − base": d["chair_i"]
                     for p, d in r["differences"].items() if p.endswith(" - base")},
          lambda f: not any(above(x) for x in f.values())),
    Claim("colour", "SymMPO's counter-prior accuracy is not below the base's beyond the noise",
          lambda r: {"SymMPO − base": _diff("symmpo - base", "acc_counter")(r)},
          lambda f: not below(f["SymMPO − base"])),
]


def verdicts(results: dict) -> list[tuple[Claim, dict, str]]:
    """Each claim of a world the run has: the figures it read and "held", "failed" or "not run"."""
    out = []
    for claim in CLAIMS:
        world = results["worlds"].get(claim.world)
        if world is None:
            continue
        try:
            figures = claim.reads(world)
        except KeyError:
            figures = {}
        out.append((claim, figures, "not run" if not figures else "held" if claim.holds(figures) else "failed"))
    return out


def markdown(results: dict) -> str:
    """results.md's last section: every claim, the figures it read, its verdict."""
    lines = ["## Claims", "", "At chance: the 95% interval holds 0.5; beyond the noise: the interval of the difference "
             "excludes 0. Each claim, the figures it read [95% interval], and whether it held in this run:", ""]
    for claim, figures, verdict in verdicts(results):
        read = "; ".join(f"{k} {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for k, v in figures.items())
        lines.append(f"- **{verdict}** ({claim.world}) {claim.text}" + (f": {read}" if read else ""))
    return "\n".join(lines) + "\n"
