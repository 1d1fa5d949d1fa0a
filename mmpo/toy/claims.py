"""The toy's reading as code: each claim a function of a run's results (results.json), with the
figures it reads, its direction and its threshold written down, so that every run says which
claims held (results.md ends with them), and the claims across runs (settings) are one command:

    python -m mmpo.toy.claims runs/toy runs/toy-A runs/toy-B runs/toy-C

which prints, per claim, its verdict in each run and whether it held in all of them: the
README quotes only those (mmpo/toy/RESULTS.md records the table).

Thresholds, fixed for every claim before the runs they were read on: *at chance* means the 95%
interval of an accuracy holds 0.5; *beyond the noise* means the 95% interval of a difference
excludes 0 (``results.collect``'s differences). The held-out pairs come in couples over which the
text is balanced (world.py), so a held-out accuracy above 0.5 is the image's, and blind DPO
(trained on black images) is the control that learned from the text alone. A base *hallucinates*
when it names an absent companion in at least 10% of the scenes that lack one. A claim about a
method the run did not train is "not run"; one whose condition the run does not meet "does not
apply".
"""
import json
import os
import sys
from typing import Callable, NamedTuple

HALLUCINATES = 0.10  # a base's companion rate from which it has something to remove


class Claim(NamedTuple):
    world: str
    text: str  # what it says, threshold included
    reads: Callable[[dict], dict]  # the world's results -> {figure: [point, low, high]}, KeyError: not run
    holds: Callable[[dict], bool | None]  # those figures -> held? (None: does not apply)


def _fig(method: str, key: str):
    return lambda r: r["figures"][method][key]


def _diff(pair: str, key: str):
    return lambda r: r["differences"][pair][key]


def below(x) -> bool:  # a difference below 0 beyond the noise
    return x[2] < 0


def above(x) -> bool:
    return x[1] > 0


def at_chance(x) -> bool:
    return x[1] <= 0.5 <= x[2]


def _reward(world: str) -> list[Claim]:
    """The held-out reward accuracy claims, the same in both worlds."""
    return [
        Claim(world, "blind DPO's held-out reward accuracy is at chance (the control: text alone is right on half "
                     "of each couple)",
              lambda r: {"blind DPO": _fig("dpo-noimage", "heldout_reward_acc")(r)},
              lambda f: at_chance(f["blind DPO"])),
        Claim(world, "DPO's held-out reward accuracy is at chance",
              lambda r: {"DPO": _fig("dpo", "heldout_reward_acc")(r)},
              lambda f: at_chance(f["DPO"])),
        Claim(world, "DPO's held-out reward accuracy is above blind DPO's beyond the noise",
              lambda r: {"blind DPO − DPO": _diff("dpo-noimage - dpo", "heldout_reward_acc")(r)},
              lambda f: below(f["blind DPO − DPO"])),
    ] + [Claim(world, f"{label}'s held-out reward accuracy is above DPO's beyond the noise",
               lambda r, m=method, k=f"{label} − DPO": {k: _diff(f"{m} - dpo", "heldout_reward_acc")(r)},
               lambda f: above(*f.values()))
         for method, label in (("mdpo", "mDPO"), ("symmpo", "SymMPO"))]


def _cuts_hallucination(r: dict) -> dict:
    return {"base": _fig("base", "companion")(r),
            **{f"{r['labels'][m]} − base": _diff(f"{m} - base", "companion")(r) for m in ("mdpo", "mfpo", "symmpo")}}


CLAIMS = _reward("colour") + [
    Claim("colour", "SymMPO's counter-prior accuracy is not below the base's beyond the noise",
          lambda r: {"SymMPO − base": _diff("symmpo - base", "acc_counter")(r)},
          lambda f: not below(f["SymMPO − base"])),
] + _reward("captions") + [
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
    Claim("captions", f"where the base hallucinates (names an absent companion in ≥ {HALLUCINATES:.0%} of the scenes "
                      "that lack it), mDPO, MFPO and SymMPO each name it less than the base, beyond the noise",
          _cuts_hallucination,
          lambda f: None if f["base"][0] < HALLUCINATES else all(below(x) for k, x in f.items() if k != "base")),
]


def verdicts(results: dict) -> list[tuple[Claim, dict, str]]:
    """Each claim of a world the run has: the figures it read and "held", "failed", "does not
    apply" or "not run"."""
    out = []
    for claim in CLAIMS:
        world = results["worlds"].get(claim.world)
        if world is None:
            continue
        try:
            figures = claim.reads(world)
        except KeyError:
            figures = {}
        held = claim.holds(figures) if figures else None
        out.append((claim, figures, "not run" if not figures else "does not apply" if held is None
                    else "held" if held else "failed"))
    return out


def markdown(results: dict) -> str:
    """results.md's last section: every claim, the figures it read, its verdict."""
    lines = ["## Claims", "", "At chance: the 95% interval holds 0.5; beyond the noise: the interval of the difference "
             "excludes 0. Each claim, the figures it read [95% interval], and whether it held in this run:", ""]
    for claim, figures, verdict in verdicts(results):
        read = "; ".join(f"{k} {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for k, v in figures.items())
        lines.append(f"- **{verdict}** ({claim.world}) {claim.text}" + (f": {read}" if read else ""))
    return "\n".join(lines) + "\n"


def across(runs: dict[str, dict]) -> str:
    """Each claim's verdict in each run (name -> results), and whether it held in every run:
    **held** only where it held in each of them; "where it applies" where it held in each run
    whose figures it applies to and did not apply in the others (at least one held)."""
    names = list(runs)
    table = {}
    for name, results in runs.items():
        for claim, _, verdict in verdicts(results):
            table.setdefault((claim.world, claim.text), {})[name] = verdict
    lines = ["| world | claim | " + " | ".join(names) + " | in every run |", "|---" * (len(names) + 3) + "|"]
    for (world, text), got in table.items():
        verdicts_ = [got.get(n) for n in names]
        applies = [v for v in verdicts_ if v != "does not apply"]
        every = ("**held**" if all(v == "held" for v in verdicts_) else
                 f"held where it applies ({len(applies)} of {len(names)})" if applies and all(v == "held" for v in applies)
                 else "no")
        lines.append(f"| {world} | {text} | " + " | ".join(v or "–" for v in verdicts_) + f" | {every} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    from mmpo.cli import UserError  # the claims themselves need nothing
    folders = argv if argv is not None else sys.argv[1:]
    if not folders:
        raise UserError("usage: python -m mmpo.toy.claims OUT [OUT ...] (toy runs' --out folders)")
    runs = {}
    for folder in folders:
        path = os.path.join(folder, "results.json")
        if not os.path.exists(path):
            raise UserError(f"{path}: not found (a finished toy run writes it)")
        with open(path) as f:
            runs[os.path.basename(os.path.normpath(folder))] = json.load(f)
    print(across(runs), end="")


if __name__ == "__main__":
    from mmpo.cli import run
    sys.exit(run(main, light=True))
