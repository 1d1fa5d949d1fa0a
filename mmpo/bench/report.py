"""The bench's tables (bench.md) from its rows: every objective with all optimisations on, where
the memory goes, each optimisation switched off alone, and TRL's step against mmpo's."""
from mmpo.common.util import markdown_table


def _f(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _ratio(a, b) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}"


def _gflop(r: dict) -> str:
    return f"{r['gflop']:.0f} / {r['floor_gflop']:.0f}" if "gflop" in r else "n/a"  # rows of older runs: none


def _rate(r: dict) -> str:
    return f"{r['gflop'] / r['step_ms'] * 1e3:.0f}" if "gflop" in r else "n/a"


def markdown(rows: list[dict], caption: str) -> str:
    """Two tables: every objective with all optimisations on, then what switching each one off
    (the cache and bf16: on) does to the step's time and peak memory, against "all on"; and
    TRL's step against each objective's, where it was measured."""
    base = {(r["shape"], r["objective"]): r for r in rows if r["variant"] == "all on"}
    cached = {(r["shape"], r["objective"]): r for r in rows if r["variant"] == "ref cache"}
    out = caption + "\n\n" + markdown_table(
        ["shape", "objective", "views", "step ms", "samples/s", "floor ms", "step/floor", "step/floor, ref cache",
         "peak MiB", "peak/floor", "LM positions/example, shared / unshared", "GFLOP, step / floor", "step GFLOP/s"],
        [[r["shape"], r["objective"], r["views"], f"{r['step_ms']:.0f}", f"{r['samples_per_s']:.1f}",
          f"{r['floor_ms']:.0f}", f"{r['step_over_floor']:.2f}", _f(cached.get(key, {}).get("step_over_floor"), ".2f"),
          _f(r["peak_mib"], ".0f"), _f(r["peak_over_floor"], ".2f"),
          f"{r['positions_shared_per_example']:.0f} / {r['positions_unshared_per_example']:.0f}",
          _gflop(r), _rate(r)]
         for key, r in base.items()])
    parts = [r for r in base.values() if r.get("memory_mib")]
    if parts:
        names = list(parts[0]["memory_mib"])
        out += ("\nwhere the memory goes (MiB, all on): what lives through the step, the activations its graph keeps "
                "for the backward, the logits at their largest (computed), the step's peak over what lives before "
                "it, and the process's peak:\n\n" + markdown_table(
                    ["shape", "objective", *names, "activations", "step's peak", "process peak"],
                    [[r["shape"], r["objective"], *(f"{r['memory_mib'][k]:.0f}" for k in names),
                      _f(r["activations_mib"], ".0f"), _f(r["peak_mib"], ".0f"), _f(r["process_peak_mib"], ".0f")]
                     for r in parts]))
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "all on"
                                  and not r["variant"].startswith("TRL")))  # in the order measured
    if variants:
        cells = []
        for (shape, objective), b in base.items():
            cells.append([shape, objective])
            for v in variants:
                r = next((r for r in rows if (r["shape"], r["objective"], r["variant"]) == (shape, objective, v)), None)
                mem = None if r is None or r["peak_mib"] is None or not b["peak_mib"] else r["peak_mib"] / b["peak_mib"]
                cells[-1].append("" if r is None else f"{r['step_ms'] / b['step_ms']:.2f} / {_f(mem, '.2f')}")
        out += "\nstep time x / peak memory x against all on:\n\n" + markdown_table(["shape", "objective"] + variants, cells)
    trl = [r for r in rows if r["variant"].startswith("TRL DPOTrainer")]
    if trl:
        cells = []
        for t in trl:  # against mmpo's rows with activation checkpointing alike
            own = "activation checkpointing" if t.get("checkpointing") else "all on"
            for b in (r for r in rows if r["shape"] == t["shape"] and r["variant"] == own):
                c = cached.get((b["shape"], b["objective"]))
                cells.append([t["shape"], t["variant"], f"{t['step_ms']:.0f}", _f(t["peak_mib"], ".0f"),
                              _f(t.get("process_peak_mib"), ".0f"), f"{t['positions_per_example']:.0f}", b["objective"],
                              own, f"{t['step_ms'] / b['step_ms']:.2f}",
                              "" if c is None or own != "all on" else f"{t['step_ms'] / c['step_ms']:.2f}",
                              _ratio(b["peak_mib"], t["peak_mib"]), _ratio(b["process_peak_mib"], t.get("process_peak_mib")),
                              _ratio(t.get("gflop"), b.get("gflop")), f"{_rate(t)} / {_rate(b)}"])
        out += ("\nagainst TRL's DPOTrainer (same model, data and batch, this run; live frozen reference): TRL step / "
                "mmpo step (and with mmpo's reference cache), mmpo peak / TRL peak (the step's, and the process's), "
                "TRL's FLOPs / mmpo's, and the rate each step ran at (matrix products and attentions, GFLOP/s): x faster "
                "is x fewer FLOPs times the rates' ratio:\n\n"
                + markdown_table(["shape", "TRL", "TRL step ms", "TRL step's peak MiB", "TRL process peak MiB",
                                  "TRL LM positions/example", "objective", "mmpo", "x faster", "x faster, ref cache",
                                  "step's peak x", "process peak x", "x fewer FLOPs", "GFLOP/s, TRL / mmpo"], cells))
    return out
