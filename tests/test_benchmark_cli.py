"""``overlock benchmark``: measurements side by side, table, JSON and plot."""
from __future__ import annotations

import json
import statistics

import pytest

from overlock.benchmark import BenchConfig, BenchResult, benchmark, format_table, top1_of
from overlock.cli.main import main


def test_benchmark_two_models_in_one_run(tmp_path, capsys):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["benchmark", "test_overlock", "plain:test_overlock", "test_convnext", "--batch-size", "2", "--img-size", "64", "--iters", "2",
            "--warmup", "1", "--json", str(out_json), "--plot", str(out_png)]
    assert main(argv) == 0
    rows = json.loads(out_json.read_text())
    assert [r["model"] for r in rows] == ["test_overlock", "plain:test_overlock", "test_convnext"]
    assert all(r["memory_format"] in ("nchw", "nhwc") for r in rows)
    for r in rows:
        assert r["images_per_s"] > 0 and r["latency_ms"] > 0 and r["peak_mem_mb"] > 0 and r["params_m"] > 0
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "test_overlock" in table and "ratio" in table


def test_train_mode_step():
    (result,) = benchmark(["test_overlock"], BenchConfig(batch_size=2, img_size=64, mode="train", iters=1, warmup=1))
    assert result.images_per_s > 0 and result.settings["mode"] == "train"


def test_ratio_column_and_published_accuracy():
    rows = [BenchResult("overlock_xt", 16.5, 2.7, 10.0, 800.0, 500.0, 82.7, memory_format="nhwc"),
            BenchResult("convnext_tiny", 28.6, 4.5, 20.0, 400.0, 600.0, 82.1, ratio=1.9)]
    lines = format_table(rows).splitlines()
    assert " 1.00 " in lines[2] and " 1.90 " in lines[3]
    assert "nhwc" in lines[2] and "nchw" in lines[3] and "layout" in lines[0]
    assert top1_of("overlock_t_reparam") == 84.2 and top1_of("plain:overlock_t") == 84.2 and top1_of("convnext_small") == 83.1 and top1_of("vit_small_patch16_224") is None


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown model"):
        benchmark(["overlock_xxl"], BenchConfig())
    with pytest.raises(ValueError, match="mode must be"):
        benchmark(["test_overlock"], BenchConfig(mode="fast"))
    with pytest.raises(ValueError, match="memory_format must be"):
        benchmark(["test_overlock"], BenchConfig(memory_format="nhcw"))
    with pytest.raises(ValueError, match="must be positive"):
        benchmark(["test_overlock"], BenchConfig(batch_size=0))


def test_steps_are_timed_round_robin_in_both_layouts(monkeypatch):
    """Every timed iteration steps each model once in each memory layout, in turn, so drifting machine load hits
    all alike; each model then counts in its faster layout."""
    from overlock import benchmark as bench

    order = []
    monkeypatch.setattr(bench, "_prepare", lambda name, fmt, cfg, count=True: bench._Prepared(
        lambda: order.append(f"{name}@{fmt}"), 3 if count else 0, 5 if count else 0))
    rows = bench._time_models(["a", "b"], BenchConfig(warmup=1, iters=2))
    assert order == ["a@nchw", "a@nhwc", "b@nchw", "b@nhwc"] * 3
    assert [sorted(row) for row in rows] == [["nchw", "nhwc"]] * 2
    assert all(row[fmt][:2] == (3, 5) and len(row[fmt][2]) == 2 for row in rows for fmt in row)
    order.clear()
    rows = bench._time_models(["a"], BenchConfig(warmup=0, iters=1, memory_format="nhwc"))
    assert order == ["a@nhwc"] and list(rows[0]) == ["nhwc"]


def test_each_model_counts_in_its_faster_layout():
    from overlock.benchmark import faster_format

    assert faster_format({"nchw": (1, 1, [3.0, 1.0, 2.0]), "nhwc": (1, 1, [1.5, 1.4, 9.0])}) == "nhwc"
    assert faster_format({"nchw": (1, 1, [0.5, 0.6, 0.7]), "nhwc": (1, 1, [1.5, 1.4, 1.0])}) == "nchw"


def test_ratio_pairs_the_rounds():
    """A slow spell in one round moves both models of that round; the paired ratio sees through it where the
    ratio of medians does not."""
    from overlock.benchmark import paired_ratio

    base = [1.0, 1.0, 3.0, 3.0, 3.0]  # the machine slows down for the last three rounds
    other = [0.5, 0.5, 1.5, 1.5, 1.5]  # twice as fast as the base in every round
    assert paired_ratio(base, other) == 2.0
    assert paired_ratio(base, base) == 1.0
    assert statistics.median(base) / statistics.median(other) == 2.0  # here both agree; below they do not
    skewed = [0.5, 0.5, 0.5, 1.5, 1.5]  # the slow spell caught the base in round 3 but not this model
    assert paired_ratio(base, skewed) == 2.0 and statistics.median(base) / statistics.median(skewed) == 6.0


def test_a_failing_model_is_named(tmp_path):
    with pytest.raises(RuntimeError, match="official:overlock_xt: .*not_a_clone"):
        benchmark(["official:overlock_xt"], BenchConfig(official_repo=str(tmp_path / "not_a_clone")))
