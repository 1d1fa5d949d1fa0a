"""`python -m mmpo.bench --smoke` end to end: the tiny model, DPO, one timed step, with and without
prefix sharing. Timings are not asserted (shared CPUs), only that every figure is there and
finite, and the one thing that is exact: the language model's token positions per example."""
import json
import math

from mmpo.bench import __main__ as bench


def test_bench_smoke_writes_every_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)  # as where trl is not installed
    bench.main(["--smoke", "--compare-trl", "--out", str(tmp_path)])
    with open(tmp_path / "bench.json") as f:  # strict JSON: NaN or Infinity would not parse
        report = json.load(f, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    rows = report["rows"]
    assert {r["variant"] for r in rows} == {"all on", "no prefix sharing"}
    for r in rows:
        for k in ("step_ms", "floor_ms", "samples_per_s", "step_over_floor"):
            assert math.isfinite(r[k]) and r[k] > 0, (k, r)
        if r["peak_mb"] is not None:  # Linux CPU or CUDA
            assert math.isfinite(r["peak_mb"])
    # DPO's two views share one image + prompt prefix: P + 2R positions instead of 2(P + R)
    r = rows[0]
    P, R = r["prompt_len"], r["response_len"]
    assert r["positions_shared_per_example"] == P + 2 * R
    assert r["positions_unshared_per_example"] == 2 * (P + R)
    assert r["positions_shared_per_example"] < r["positions_unshared_per_example"]
    assert {r["variant"]: r["positions_per_example"] for r in rows} == {"all on": P + 2 * R, "no prefix sharing": 2 * (P + R)}
    table = (tmp_path / "bench.md").read_text()
    assert "| tiny | dpo | 2 |" in table and "no prefix sharing" in table
    out = capsys.readouterr().out
    assert table in out
    # --compare-trl without trl: one line, said and saved, and the run goes on
    skipped = "--compare-trl: skipped, trl is not installed (it is not a dependency of mmpo)"
    assert report["notes"] == [skipped] and out.count(skipped) == 2 and "TRL DPOTrainer" not in table


def _row(objective, variant, step_ms, peak_mb, **extra):
    return {"shape": "llava-1.5", "objective": objective, "variant": variant, "views": 2, "step_ms": step_ms,
            "samples_per_s": 4000 / step_ms, "floor_ms": step_ms / 2, "step_over_floor": 2.0, "peak_mb": peak_mb,
            "peak_over_floor": 1.0, "positions_shared_per_example": 1000, "positions_unshared_per_example": 1600, **extra}


def test_trl_table_divides_trls_step_by_mmpos_and_mmpos_peak_by_trls():
    rows = [_row("dpo", "all on", 2000, 1000), _row("symmpo", "all on", 5000, 2000),
            _row("dpo", "TRL DPOTrainer", 17000, 4000, positions_per_example=1642)]
    table = bench.markdown(rows, "caption")
    assert "| llava-1.5 | 17000 | 4000 | 1642 | dpo | 8.5 | 0.25 |" in table
    assert "| llava-1.5 | 17000 | 4000 | 1642 | symmpo | 3.4 | 0.50 |" in table
    assert table.count("| llava-1.5 | dpo |") == 1  # TRL's row is not one of mmpo's
