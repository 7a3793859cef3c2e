"""Smoke tests of the benchmark scripts' code paths on the tiny model (seconds; no timing asserted).

Each arm runs in-process here (the scripts run them in subprocesses); what is checked is that every
arm trains the same setup, that the meters count what the arms ran on, and that BENCHMARKS.md
sections are written and replaced.
"""

import csv
import dataclasses
import json
import math
import sys
from argparse import Namespace

import numpy as np
import pytest

from benchmarks import (accuracy_parity, cpu_step_loop, dropout_saved_memory, predict_speed,
                        train_speed)
from benchmarks import common as bc
from benchmarks import stacks

from .conftest import AGNEWS_SMALL


@pytest.fixture
def speed_setup(tmp_path, tiny_model_dir):
    args = train_speed.parse_args(["--model", str(tiny_model_dir), "--data", str(AGNEWS_SMALL), "--steps", "2",
                                   "--rows", "32", "--batch-size", "8", "--val-rows", "16", "--device", "cpu",
                                   "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "BENCH.md")])
    setup, workdir, skip = train_speed.prepare(args)
    return args, setup, workdir, skip


def test_train_speed_arms_train_the_same_setup_and_are_measured(speed_setup):
    args, setup, workdir, skip = speed_setup
    assert skip == 1 and setup.steps == 2 and setup.batch_size == 8
    assert len(bc.read_rows(workdir / "train.csv").texts) == 32
    results = {}
    for arm in ("notebook", "best-practice", "textlora"):
        result = train_speed.run_arm(arm, setup, workdir, skip)
        result["process_peak_rss_mb"] = result["peak_rss_mb"]  # what run_child adds in the real script
        results[arm] = result
    for arm, r in results.items():
        assert r["steps_seen"] == 2 and r["window_steps"] == 1, arm
        assert r["rows_counted"], f"{arm}: the forward hook saw no training batch"
        assert r["samples_per_s"] > 0 and r["real_tokens_per_s"] > 0
        assert r["pad_ratio"] >= 1.0
        assert math.isfinite(r["final_loss"])
    # Same LoRA + head in every arm: r=8 on query/value of 2 layers (hidden 32) and a 4-class head.
    assert {r["trainable_params"] for r in results.values()} == {2 * 2 * (32 * 8 + 8 * 32) + 32 * 4 + 4}
    # The notebook pads all 32 rows (one map chunk) to the longest; the others pad per batch.
    assert results["notebook"]["pad_ratio"] > results["best-practice"]["pad_ratio"]
    assert results["notebook"]["pad_ratio"] > results["textlora"]["pad_ratio"]

    meta = {**json.loads((workdir / "setup.json").read_text()), "threads": "the test's threads"}
    text = train_speed.report(args, setup, list(results.values()), meta)
    ratio = results["textlora"]["samples_per_s"] / results["notebook"]["samples_per_s"]
    assert f"textlora / notebook: **{ratio:.2f}x**" in text
    out = workdir.parent / "BENCH.md"
    bc.write_section(out, "train_speed-cpu-all", text)
    bc.write_section(out, "other", "## other")
    bc.write_section(out, "train_speed-cpu-all", text.replace("Training speed", "Training speed again"))
    written = out.read_text()
    assert written.count("<!-- train_speed-cpu-all:start -->") == 1 and "Training speed again" in written
    assert "<!-- train_speed-cpu-all:end -->\n\n<!-- other:start -->" in written  # order and spacing kept


def test_train_speed_rounds_give_per_round_ratios_and_their_median(speed_setup):
    args, setup, workdir, _ = speed_setup
    meta = {**json.loads((workdir / "setup.json").read_text()), "threads": "the test's threads"}

    def result(arm: str, round_: int, rate: float) -> dict:
        return {"arm": arm, "round": round_, "samples_per_s": rate, "real_tokens_per_s": rate * 50, "pad_ratio": 1.0,
                "process_peak_rss_mb": 1.0, "final_loss": 0.5, "window_s": 1.0, "setup_s": 1.0,
                "trainable_params": 10, "precision": "fp32"}

    # Round 2 ran on a machine half as fast: each round's ratio is still 2x, the pooled rates would not say so.
    rates = {1: {"textlora-cache": 400.0, "textlora-nocache": 200.0},
             2: {"textlora-cache": 220.0, "textlora-nocache": 100.0},
             3: {"textlora-cache": 380.0, "textlora-nocache": 200.0}}
    results = [result(arm, r, rate) for r, arms in rates.items() for arm, rate in arms.items()]
    text = train_speed.report(args, setup, results, meta)
    assert "textlora-cache / textlora-nocache: **2.00x** train samples/s (median of 3 rounds: 2.00, 2.20, 1.90)" in text
    assert "3 rounds of the 2 arms in turn" in text
    assert "| textlora-cache | 2 | 220 |" in text
    with pytest.raises(SystemExit):
        train_speed.parse_args(["--rounds", "0"])


def test_allocator_arms_are_compared_on_the_same_allocator_and_against_the_default(speed_setup):
    args, setup, workdir, _ = speed_setup
    meta = {**json.loads((workdir / "setup.json").read_text()), "threads": "the test's threads"}
    rates = {"best-practice": 100.0, "best-practice+tcmalloc": 110.0, "textlora": 170.0, "textlora+tcmalloc": 231.0}
    results = [{"arm": arm, "round": 1, "samples_per_s": rate, "real_tokens_per_s": rate * 50, "pad_ratio": 1.0,
                "process_peak_rss_mb": 1.0, "final_loss": 0.5, "window_s": 1.0, "setup_s": 1.0,
                "trainable_params": 10, "precision": "fp32"} for arm, rate in rates.items()]
    ratios = [line for line in train_speed.report(args, setup, results, meta).splitlines() if line.startswith("- ")]
    assert ratios == [
        "- textlora / best-practice: **1.70x** train samples/s (target >= 1.5x on CPU, all-layer LoRA)",
        "- textlora+tcmalloc / best-practice+tcmalloc: **2.10x** train samples/s (target >= 1.5x on CPU, all-layer LoRA)",
        "- textlora+tcmalloc / best-practice: **2.31x** train samples/s (target >= 1.5x on CPU, all-layer LoRA)",
        "- best-practice+tcmalloc / best-practice: **1.10x** train samples/s",
        "- textlora+tcmalloc / textlora: **1.36x** train samples/s"]
    with pytest.raises(SystemExit):
        train_speed.parse_args(["--arms", "textlora+mimalloc"])


def test_a_gpu_run_projects_the_epoch_time_of_textlora_with_and_without_compile(speed_setup):
    args, setup, workdir, _ = speed_setup
    meta = {**json.loads((workdir / "setup.json").read_text()), "threads": "the test's threads"}
    rates = {"textlora": 6000.0, "textlora-compile": 8000.0}
    results = [{"arm": arm, "round": 1, "samples_per_s": rate, "real_tokens_per_s": rate * 50, "pad_ratio": 1.0,
                "process_peak_rss_mb": 1.0, "peak_cuda_mb": 1.0, "final_loss": 0.5, "window_s": 1.0,
                "setup_s": 1.0, "trainable_params": 10, "precision": "bf16"} for arm, rate in rates.items()]
    ratios = [line for line in train_speed.report(args, dataclasses.replace(setup, device="cuda"), results, meta)
              .splitlines() if line.startswith("- ")]
    assert ratios == [
        "- textlora-compile / textlora: **1.33x** train samples/s",
        "- a 120,000-text AG News epoch at textlora's rate: **20.0 s** (target <= 15 s on an H100-class GPU)",
        "- a 120,000-text AG News epoch at textlora-compile's rate: **15.0 s** (target <= 15 s on an H100-class GPU)"]


def test_an_arm_that_is_not_on_its_allocator_stops(speed_setup):
    _, setup, workdir, skip = speed_setup
    with pytest.raises(SystemExit, match="arm textlora\\+tcmalloc runs on glibc malloc, not tcmalloc"):
        train_speed.run_arm("textlora+tcmalloc", setup, workdir, skip)  # this process was started without it


@pytest.mark.skipif(bc.check_arms(["x+tcmalloc"], ["x"]) != [], reason="tcmalloc is not installed")
def test_allocator_env_starts_an_arm_on_its_allocator_and_a_plain_arm_on_glibc(tmp_path, monkeypatch):
    from textlora.speed.allocator import find_library

    monkeypatch.setenv("LD_PRELOAD", find_library("tcmalloc"))  # a plain arm drops the benchmark's own preload
    probe = ("import sys; from benchmarks.common import check_allocator; "
             "open(sys.argv[2], 'w').write(check_allocator(sys.argv[1]))")
    for arm, expected in (("x+tcmalloc", "tcmalloc"), ("x", "glibc")):
        out = tmp_path / f"{expected}.txt"
        env = {**bc.allocator_env(arm), "PYTHONPATH": str(bc.REPO)}
        measured = bc.run_measured([sys.executable, "-c", probe, arm, str(out)], env)
        assert measured["returncode"] == 0 and out.read_text() == expected, arm


def test_top_layout_puts_lora_on_the_top_third_and_from_epoch_skips_whole_epochs(tmp_path, tiny_model_dir):
    args = train_speed.parse_args(["--model", str(tiny_model_dir), "--data", str(AGNEWS_SMALL), "--steps", "6",
                                   "--rows", "16", "--batch-size", "8", "--lora-layout", "top", "--from-epoch", "2",
                                   "--device", "cpu", "--workdir", str(tmp_path), "--out", "none"])
    setup, _, skip = train_speed.prepare(args)
    assert setup.layers == (1,) and setup.layers_spec == "1-1"
    assert skip == 2  # 16 rows / batch 8 = 2 steps per epoch
    overrides = stacks.textlora_overrides(setup, tmp_path / "t.csv", tmp_path / "v.csv", tmp_path, "x")
    assert "model.layers='1-1'" in overrides


@pytest.fixture
def tiny_run(tmp_path, tiny_model_dir):
    rows = tmp_path / "rows.csv"
    bc.write_rows(bc.load_agnews(AGNEWS_SMALL, 48, 0), rows)
    bc.write_rows(bc.load_agnews(AGNEWS_SMALL, 16, 0, skip=48), tmp_path / "val.csv")
    setup = stacks.TrainSetup(model_dir=str(tiny_model_dir), lora_r=4, lora_alpha=8, batch_size=16, steps=2, log_every=1)
    from textlora.config import load_config
    from textlora.training.recipe import train

    overrides = stacks.textlora_overrides(setup, rows, tmp_path / "val.csv", tmp_path / "runs", "r")
    config = load_config(None, tuple(overrides))
    return train(config), rows


def test_predict_arms_write_the_same_predictions(tiny_run, tmp_path):
    run_dir, rows = tiny_run
    nb = predict_speed.notebook_arm(run_dir, rows, tmp_path / "nb.csv", 8, "cpu")
    dyn = predict_speed.notebook_arm(run_dir, rows, tmp_path / "dyn.csv", 8, "cpu", chunk_padding=False)
    tl = predict_speed.textlora_arm(run_dir, rows, tmp_path / "tl.csv", None, "cpu")
    tl32 = predict_speed.textlora_arm(run_dir, rows, tmp_path / "tl32.csv", None, "cpu", "fp32")
    assert min(nb["seconds"], dyn["seconds"], tl["seconds"]) > 0 and nb["loop_s"] <= nb["seconds"]
    assert tl32["precision"] == "fp32" and tl["precision"] in ("fp32", "bf16")  # the run's own: machine-dependent
    nb_preds, dyn_preds, tl_preds = (predict_speed.read_predictions(tmp_path / f"{name}.csv")
                                     for name in ("nb", "dyn", "tl"))
    assert len(nb_preds) == len(dyn_preds) == len(tl_preds) == 48
    # merged vs unmerged LoRA, chunk- vs batch- vs length-sorted padding: the same classifier
    assert np.mean(nb_preds == tl_preds) >= 0.95 and np.mean(dyn_preds == tl_preds) >= 0.95


def test_run_measured_reports_the_childs_own_peak_memory():
    small = bc.run_measured([sys.executable, "-c", "pass"])
    big = bc.run_measured([sys.executable, "-c", "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096])"])
    assert small["returncode"] == big["returncode"] == 0
    # Each child's own peak: not this (torch-sized) test process's, and not the previous child's.
    assert small["peak_rss_mb"] < 100
    assert 300 < big["peak_rss_mb"] < 400


def test_write_synthetic_draws_real_texts_with_replacement(tmp_path):
    pool = bc.load_agnews(AGNEWS_SMALL)
    path = tmp_path / "s.csv"
    predict_speed.write_synthetic(pool.texts, pool.labels, 500, path, seed=1)
    assert predict_speed.count_lines(path) == 501
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["text"] for r in rows} <= set(pool.texts) and len({r["text"] for r in rows}) < 500


def test_accuracy_parity_arms_score_the_same_test_rows(tmp_path, tiny_model_dir):
    bc.write_rows(bc.load_agnews(AGNEWS_SMALL, 32, 0), tmp_path / "train.csv")
    bc.write_rows(bc.load_agnews(AGNEWS_SMALL, 16, 0, skip=32), tmp_path / "val.csv")
    test = bc.load_agnews(AGNEWS_SMALL, 40, 0, skip=48)
    bc.write_rows(test, tmp_path / "test.csv")
    setup = stacks.TrainSetup(model_dir=str(tiny_model_dir), batch_size=16, epochs=1, log_every=1)
    results = [accuracy_parity.run_arm(arm, setup, tmp_path) for arm in ("notebook", "textlora")]
    for r in results:
        # Accuracy is a count of the 40 test rows, so it is a multiple of 1/40.
        assert 0 <= r["test_accuracy"] <= 1 and round(r["test_accuracy"] * 40, 6) % 1 == 0
    textlora_run = next((tmp_path / "runs").iterdir())
    assert json.loads((textlora_run / "summary.json").read_text())["test_accuracy"] == pytest.approx(
        results[1]["test_accuracy"], abs=1e-4)


def test_accuracy_parity_pairs_differences_by_seed():
    results = [{"arm": arm, "seed": seed, "test_accuracy": acc} for arm, seed, acc in (
        ("notebook", 1, 0.80), ("textlora", 1, 0.81), ("notebook", 2, 0.90), ("textlora", 2, 0.89),
        ("notebook", 3, 0.85), ("textlora", 3, 0.88), ("textlora", 4, 0.99))]  # seed 4 has no pair: left out
    line = accuracy_parity.paired_difference(results, "textlora", "notebook", 100)
    # differences +0.01, -0.01, +0.03: mean +0.01, sample std 0.02, standard error 0.02 / sqrt(3);
    # 95% interval: +/- t(0.975, 2 degrees of freedom) = 4.303 standard errors
    assert "+0.0100 +/- 0.0115" in line and "3 seeds" in line and "+1 of 100 test rows" in line
    assert "95% interval -0.0397 to +0.0597" in line
    assert "per seed +0.0100, -0.0100, +0.0300" in line


@pytest.mark.parametrize("argv, message", [
    (["--arms", "notebook,textlora-typo"], "unknown arm(s) textlora-typo"),
    (["--arms", "textlora", "--baseline", "notebook"], "--baseline notebook is not one of --arms"),
])
def test_accuracy_parity_refuses_unknown_arms_and_a_baseline_that_does_not_run(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        accuracy_parity.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_accuracy_parity_baseline_defaults_to_the_notebook():
    assert accuracy_parity.parse_args(["--arms", "textlora,textlora-fp32"]).baseline == "notebook"
    assert accuracy_parity.parse_args(["--arms", "textlora,textlora-fp32", "--baseline", "textlora"]).baseline == "textlora"


def test_accuracy_parity_reuses_results_only_for_the_same_inputs(tmp_path):
    rows = bc.load_agnews(AGNEWS_SMALL, 8, 0)
    path = tmp_path / "train.csv"
    accuracy_parity.write_inputs(rows, path, reuse=True)        # nothing there yet: written
    first = path.read_bytes()
    accuracy_parity.write_inputs(rows, path, reuse=True)        # the same rows again: accepted
    assert path.read_bytes() == first
    with pytest.raises(SystemExit, match="other rows or another setup"):
        accuracy_parity.write_inputs(bc.load_agnews(AGNEWS_SMALL, 8, 1), path, reuse=True)
    assert path.read_bytes() == first and not list(tmp_path.glob("*.new"))  # the earlier inputs are kept
    accuracy_parity.write_inputs(bc.load_agnews(AGNEWS_SMALL, 8, 1), path, reuse=False)  # a fresh run overwrites
    assert path.read_bytes() != first


def test_cpu_step_loop_times_both_attentions_and_reads_memory_every_50_steps(tiny_model_dir):
    args = Namespace(model=str(tiny_model_dir), rows=96, window=1, rounds=1, drift_steps=50,
                     attention="textlora's attention function")
    alternate = cpu_step_loop._alternate(args)
    assert "attention dropout" in alternate["note"]  # the attention function is installed, not only SDPA
    assert set(alternate["samples_per_s"]) == set(cpu_step_loop.MODES)
    assert all(rate > 0 for rate in alternate["samples_per_s"].values())
    (window,) = cpu_step_loop._drift(args)["windows"]
    assert window["step"] == 50 and 0 < window["trimmed_rss_gb"] <= window["peak_rss_gb"] * 1.01


def test_dropout_saved_memory_counts_less_for_the_byte_mask_and_restores_textloras(tiny_model_dir):
    from textlora.speed import cpu_dropout

    now = cpu_dropout._Dropout
    rows = bc.load_agnews(AGNEWS_SMALL, count=dropout_saved_memory.BATCH, seed=0)
    kept, _, length = dropout_saved_memory._measure(str(tiny_model_dir), rows)
    byte_mask, dtype_mask = kept.values()
    # In fp32 or bf16, every dropout mask kept for backward shrinks to 1 byte per element.
    assert 0 < byte_mask < dtype_mask and length > 1
    assert cpu_dropout._Dropout is now


def test_alternate_windows_runs_every_arm_on_the_same_batches_and_takes_turns_going_first():
    order, seen = [], {"a": [], "b": []}
    current = {}

    def step(batch) -> int:
        seen[current["arm"]].append(batch)
        return 1

    arms = {name: (lambda name=name: (order.append(name), current.update(arm=name))) for name in ("a", "b")}
    rates = cpu_step_loop.alternate_windows(step, list(range(5)), arms, window=2, rounds=2)
    assert order == ["a", "b", "b", "a", "a", "b"]  # round 0 (warm-up), then reversed every other round
    assert seen["a"] == seen["b"] == [0, 1, 2, 3, 4, 0]
    assert set(rates) == {"a", "b"} and all(rate > 0 for rate in rates.values())


def test_publish_section_keeps_the_raw_output_dated_and_replaces_its_section_without_machine_paths(tmp_path,
                                                                                                   monkeypatch):
    import time

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "2026-12-24" if fmt == "%Y-%m-%d" else "x")
    out = tmp_path / "BENCH.md"
    body = ("## Training speed: cpu\n\nCommand: `python benchmarks/train_speed.py --workdir /tmp/bench-all3`\n\n"
            f"Rows from {bc.REPO.parent}/shared/data/train.csv, allocator /usr/lib/x86_64-linux-gnu/libtc.so.4, "
            f"config {bc.REPO}/configs/quickstart.yaml; 12 samples/s.")
    bc.publish_section(str(out), "speed-a", body)
    bc.publish_section(str(out), "speed-b", body)  # same title, another section: its heading gets the key
    bc.publish_section(str(out), "speed-a", body.replace("12 samples/s", "13 samples/s"))  # a re-run replaces
    raw = tmp_path / "benchmarks" / "results" / "speed-a-2026-12-24.md"
    assert raw.read_text() == body.replace("12 samples/s", "13 samples/s") + "\n"  # raw: as the script wrote it
    page = out.read_text()
    assert page.count("<!-- speed-a:start -->") == 1 and "13 samples/s" in page and "12 samples/s" in page
    assert page.count("## Training speed: cpu\n") == 1 and "## Training speed: cpu (speed-b)\n" in page
    assert "/tmp/" not in page and str(bc.REPO) not in page and "/usr/" not in page
    assert "--workdir bench-all3" in page and "../shared/data/train.csv" in page and "libtc.so.4" in page
    assert "configs/quickstart.yaml" in page
    assert "Raw output: [benchmarks/results/speed-a-2026-12-24.md](benchmarks/results/speed-a-2026-12-24.md)" in page
    bc.publish_section("none", "speed-c", body)
    assert not (tmp_path / "benchmarks" / "results" / "speed-c-2026-12-24.md").exists()



# run_table.py writes results tables into README/docs pages and names them with --page (default: print only).
MEASURING = sorted(p.name for p in bc.REPO.glob("benchmarks/*.py")
                   if "publish_section(" in p.read_text() and p.name not in ("common.py", "run_table.py"))


@pytest.mark.parametrize("script", MEASURING)
def test_every_measuring_benchmark_takes_out_and_none_prints_only(script):
    import subprocess

    shown = subprocess.run([sys.executable, str(bc.REPO / "benchmarks" / script), "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert "--out OUT" in shown and "none" in shown
