"""Crash safety: a run killed (SIGKILL) or interrupted (SIGINT) mid-epoch resumes to exactly the uninterrupted result.

The interrupted runs are real ``textlora train`` subprocesses, stopped mid-epoch as soon as a
periodic checkpoint exists (SIGKILL in the second epoch, SIGINT in the first), then resumed with
``--resume``. On CPU
the resumed run matches bit for bit: losses, validation metrics and adapter weights, with dropout
on (the RNG is part of the checkpoint).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from textlora.training import checkpoint as ckpt
from textlora.cli import main
from textlora.training.interrupts import DeferredInterrupt

from .conftest import AGNEWS_SMALL, REPO

STEPS = 153  # 202 training rows / batch 4 = 51 steps per epoch, 3 epochs


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """The config (evaluate + checkpoint every 10 steps, log every 3) and the uninterrupted reference run."""
    folder = tmp_path_factory.mktemp("crash")
    config = folder / "crash.yaml"
    config.write_text(f"""
model: {{name_or_path: {tiny_model_dir}, max_length: 48, lora_r: 4, lora_alpha: 8, lora_dropout: 0.1}}
data:
  train: {{path: {AGNEWS_SMALL}, column_names: [label, title, description], text_columns: [title, description]}}
  label_names: [World, Sports, Business, Sci/Tech]
  validation_size: 40
optim: {{lr: 2.0e-3, warmup_steps: 5}}
train: {{epochs: 3, batch_size: 4, eval_every_steps: 10, log_every_steps: 3, keep_last: 3, num_threads: 1,
        metric_for_best: loss,
        output_dir: {folder / 'runs'}, quiet: true}}
""")
    assert main(["train", "--config", str(config), "train.run_name=reference"]) == 0
    return config, folder / "runs"


def _start(config, name):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "textlora.cli", "train", "--config", str(config),
                             f"train.run_name={name}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_checkpoint(proc, run, step, timeout=300):
    """Poll until the checkpoint of ``step`` is complete (renamed into place)."""
    first = run / "checkpoints" / f"step-{step:07d}"
    deadline = time.time() + timeout
    while not first.is_dir():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "training never wrote its first checkpoint"
        time.sleep(0.01)


def _numbers(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(l["kind"], l["step"], l["loss"], l.get("accuracy"), l.get("macro_f1"), l.get("best")) for l in lines]


def _assert_same_result(run, reference):
    assert _numbers(run) == _numbers(reference)
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    for name in ("eval.json", "summary.json"):
        got, want = json.loads((run / name).read_text()), json.loads((reference / name).read_text())
        for key in ("accuracy", "loss", "confusion_matrix", "best_value", "best_step", "steps", "validation_accuracy"):
            assert got.get(key) == want.get(key), (name, key)


def test_sigkill_mid_epoch_then_resume_is_bit_exact(setup):
    config, runs = setup
    run = runs / "killed"
    proc = _start(config, "killed")
    _wait_for_checkpoint(proc, run, 60)  # in the second epoch: resuming must also restore the epoch's order
    proc.kill()  # SIGKILL: no handler runs, whatever was being written stays half-written
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()
    resume_from = ckpt.latest_valid(run / "checkpoints")
    loop = json.loads((resume_from / "loop.json").read_text())
    assert loop["epoch"] == 1 and 0 < loop["batches_done"] < 51  # mid-epoch

    assert main(["train", "--resume", str(run)]) == 0
    _assert_same_result(run, runs / "reference")
    # Wall time spans both processes up to the checkpoint (it was only the resuming one's, shorter than training).
    summary = json.loads((run / "summary.json").read_text())
    assert summary["wall_seconds"] > loop["wall_seconds"] > 0
    assert summary["wall_seconds"] >= summary["train_seconds"]


def test_sigint_saves_a_checkpoint_exits_cleanly_and_resumes_exactly(setup):
    config, runs = setup
    run = runs / "interrupted"
    proc = _start(config, "interrupted")
    _wait_for_checkpoint(proc, run, 10)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: SIGINT at step ") and f"textlora train --resume {run}" in last
    step = int(last.split("at step ")[1].split()[0])
    assert 10 <= step < STEPS
    saved = ckpt.latest_valid(run / "checkpoints")
    assert saved.name == f"step-{step:07d}"  # a checkpoint of exactly where it stopped
    assert _leftovers(run) == []

    assert main(["train", "--resume", str(run)]) == 0
    _assert_same_result(run, runs / "reference")


def _leftovers(folder):
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".old")))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_is_deferred_second_stops_at_once(signum):
    # What was installed before is what comes back (SIG_IGN for SIGINT when started in the background).
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with DeferredInterrupt() as interrupt:
        os.kill(os.getpid(), signum)
        time.sleep(0.01)  # Python runs the handler at the next bytecode boundary
        assert interrupt.requested == signal.Signals(signum).name
        with pytest.raises(KeyboardInterrupt, match="received twice"):
            os.kill(os.getpid(), signum)
            time.sleep(0.01)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_disabled_for_several_processes_installs_nothing():
    # Compared with the handlers the test starts with: a shell that ran it in the background ignores SIGINT.
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with DeferredInterrupt(enabled=False) as interrupt:
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert interrupt.requested is None


def test_resume_drops_log_lines_after_the_checkpoint_and_a_line_cut_off_by_a_kill(tmp_path):
    from textlora.run.folder import MetricsLog

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0}) for s in (3, 6, 9, 12)]
    path.write_text("\n".join(lines) + '\n{"kind": "train", "st')  # SIGKILL in the middle of a write
    MetricsLog(path).truncate_after(9)
    assert path.read_text() == "\n".join(lines[:3]) + "\n"
