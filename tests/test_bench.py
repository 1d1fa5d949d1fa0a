"""`python -m mmpo.bench --smoke` end to end: the tiny model, DPO, one timed step, with and without
prefix sharing. Timings are not asserted (shared CPUs), only that every figure is there and
finite, and the one thing that is exact: the language model's token positions per example."""
import json
import math

from mmpo import bench


def test_bench_smoke_writes_every_figure(tmp_path, capsys):
    bench.main(["--smoke", "--out", str(tmp_path)])
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
    assert table in capsys.readouterr().out
