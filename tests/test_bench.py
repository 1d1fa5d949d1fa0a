"""`python -m mmpo.bench --smoke` end to end: the tiny model, DPO, one timed step, with and without
prefix sharing. Timings are not asserted (shared CPUs), only that every figure is there and
finite, and the one thing that is exact: the language model's token positions per example."""
import json
import math

import pytest
import torch

from mmpo.bench import __main__ as bench
from mmpo.bench.measure import Flops, SavedForBackward, lm_positions
from mmpo.bench.timed import checkpointing
from mmpo.data import PreferenceDataset, collate, pad_id
from mmpo.logps import sequence_logps
from mmpo.models import freeze_vision_tower
from mmpo.recipes import OBJECTIVES
from mmpo.tiny import tiny_model


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
        if r["peak_mib"] is not None:  # Linux CPU or CUDA
            assert math.isfinite(r["peak_mib"])
    # DPO's two views share one image + prompt prefix: P + 2R positions instead of 2(P + R)
    r = rows[0]
    P, R = r["prompt_len"], r["response_len"]
    assert r["positions_shared_per_example"] == P + 2 * R
    assert r["positions_unshared_per_example"] == 2 * (P + R)
    assert r["positions_shared_per_example"] < r["positions_unshared_per_example"]
    assert {r["variant"]: r["positions_per_example"] for r in rows} == {"all on": P + 2 * R, "no prefix sharing": 2 * (P + R)}
    # what lives through the step: AdamW keeps two moments per trained weight; the frozen copy is all of them
    lives = rows[0]["memory_mib"]
    assert lives["AdamW moments"] == pytest.approx(2 * lives["gradients"]) and lives["frozen copy"] == lives["weights"]
    assert 0 < lives["gradients"] < lives["weights"]  # the vision tower is frozen
    assert rows[0]["activations_mib"] > 0 and rows[0]["process_peak_mib"] > lives["weights"] + lives["AdamW moments"]
    # the step adds the reference's forward to the floor's work; sharing the prefix runs fewer positions
    assert {r["variant"]: r["gflop"] > r["floor_gflop"] > 0 for r in rows} == {"all on": True, "no prefix sharing": True}
    assert rows[0]["floor_gflop"] < rows[1]["floor_gflop"]
    table = (tmp_path / "bench.md").read_text()
    assert "| tiny | dpo | 2 |" in table and "no prefix sharing" in table
    out = capsys.readouterr().out
    assert table in out
    # --compare-trl without trl: one line, said and saved, and the run goes on
    skipped = "--compare-trl: skipped, trl is not installed (it is not a dependency of mmpo)"
    assert report["notes"] == [skipped] and out.count(skipped) == 2 and "TRL DPOTrainer" not in table


def _row(objective, variant, step_ms, peak_mib, **extra):
    return {"shape": "llava-1.5", "objective": objective, "variant": variant, "views": 2, "step_ms": step_ms,
            "samples_per_s": 4000 / step_ms, "floor_ms": step_ms / 2, "step_over_floor": 2.0, "peak_mib": peak_mib,
            "peak_over_floor": 1.0, "positions_shared_per_example": 1000, "positions_unshared_per_example": 1600, **extra}


def test_trl_table_divides_trls_step_by_mmpos_and_mmpos_peak_by_trls():
    rows = [_row("dpo", "all on", 2000, 1000, process_peak_mib=3000, gflop=40, floor_gflop=30), _row("dpo", "ref cache", 1700, 900),
            _row("dpo", "activation checkpointing", 2500, 500, process_peak_mib=2500),
            _row("symmpo", "all on", 5000, 2000, process_peak_mib=4000),
            _row("dpo", "TRL DPOTrainer", 17000, 4000, positions_per_example=1642, process_peak_mib=8000, gflop=170),
            _row("dpo", "TRL DPOTrainer, activation checkpointing", 20000, 2000, positions_per_example=1642,
                 process_peak_mib=6000, checkpointing=True)]
    table = bench.markdown(rows, "caption")
    trl = "| llava-1.5 | TRL DPOTrainer | 17000 | 4000 | 8000 | 1642 |"
    # 170 GFLOP in 17 s against 40 in 2 s: 4.25x fewer FLOPs at twice the rate
    assert f"{trl} dpo | all on | 8.50 | 10.00 | 0.25 | 0.38 | 4.25 | 10 / 20 |" in table
    assert "| llava-1.5 | dpo | 2 | 2000 | 2.0 | 1000 | 2.00 | 2.00 | 1000 | 1.00 | 1000 / 1600 | 40 / 30 | 20 |" in table
    assert f"{trl} symmpo | all on | 3.40 |  | 0.50 | 0.50 |" in table
    # with activation checkpointing, against mmpo's run with it
    assert ("| llava-1.5 | TRL DPOTrainer, activation checkpointing | 20000 | 2000 | 6000 | 1642 | dpo | "
            "activation checkpointing | 8.00 |  | 0.25 | 0.42 |") in table
    assert table.count("TRL DPOTrainer |") == 2  # one row per mmpo objective measured alike
    assert table.count("| llava-1.5 | dpo |") == 2  # TRL's rows are none of mmpo's (all on; the variants' table)


@pytest.mark.parametrize("objective", ["mdpo", "symmpo"])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_the_floor_runs_every_forward_the_step_needs(synthetic, objective, share_prefix):
    """mDPO and SymMPO score their views in two packed forwards (one per group size): the floor
    runs both, its positions at the language model's embeddings are ``lm_positions``, and its
    loss is the sum of the step's log-probs over every row."""
    model, proc = tiny_model("tiny-llava")
    freeze_vision_tower(model)
    views = OBJECTIVES[objective].views
    ds = PreferenceDataset(synthetic, proc, views, m_prime="crop")
    batch = collate([ds[i] for i in range(3)], views, pad_id(proc.tokenizer))
    params = [p for p in model.parameters() if p.requires_grad]
    floor = bench.make_floor(model, batch, params, share_prefix, bf16=False, chunk=16)
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    loss = floor()
    assert sum(seen) == lm_positions(batch, share_prefix)
    assert len(seen) == (2 if share_prefix else 1)
    with torch.no_grad():
        want = sequence_logps(model, batch, share_prefix=False)[0].sum()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-4)
    assert all(p.grad is None for p in params)


def test_saved_for_backward_counts_each_kept_storage_once_and_leaves_out_the_weights():
    w = torch.nn.Parameter(torch.ones(1000))
    x = torch.randn(1000, requires_grad=True)
    with SavedForBackward([w]) as saved:
        y = x * w  # keeps x and w
        z = (y * y).sum()  # keeps y (twice: one storage)
        v = x[:10] * 3.0  # a view of x: nothing new (its storage is x's; a constant factor keeps nothing)
    assert saved.bytes == 2 * 1000 * 4
    (z + v.sum()).backward()


def test_checkpointing_for_one_call_leaves_the_model_as_it_was():
    """The bench switches activation checkpointing on around one call: afterwards no layer
    recomputes and no hook is left on the input embeddings (transformers' disable keeps the one
    its enable adds, which would make every later call's embeddings require grad)."""
    model, _ = tiny_model("tiny-llava")
    embeddings = model.get_input_embeddings()
    before = len(embeddings._forward_hooks)
    for _ in range(2):
        with checkpointing(model, True):
            assert model.model.language_model.layers[0].gradient_checkpointing
    assert len(embeddings._forward_hooks) == before
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_flops_are_counted_by_hand_including_the_cpus_attention_kernel():
    """Attention over 2 x 4 heads x 10 queries x 10 keys x 8 dims: 4 b h s^2 d forward (QK' and PV,
    2 per multiply-add), 2.5 times that backward, masked or not; a (5, 6) x (6, 7) product with
    only the left operand trained: 2 * 5 * 6 * 7 forward, as much backward."""
    q, k, v = (torch.randn(2, 4, 10, 8, requires_grad=True) for _ in range(3))
    with Flops() as f:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(10, 10, dtype=torch.bool).tril())
    assert f.total == 4 * 2 * 4 * 10 * 10 * 8 == 25600
    with Flops() as f:
        out.sum().backward()
    assert f.total == 64000
    a = torch.randn(5, 6, requires_grad=True)
    with Flops() as f:
        (a @ torch.randn(6, 7)).sum().backward()
    assert f.total == 2 * (2 * 5 * 6 * 7)
