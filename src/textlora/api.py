"""The public Python API: one function per stage, each a thin call of the stage the CLI runs.

    import textlora
    config = textlora.load_config("configs/quickstart.yaml", ["train.epochs=1"])
    run_dir = textlora.train(config)
    textlora.report(run_dir)
    averaged = textlora.average(run_dir, greedy=True)   # needs kept checkpoints (train.keep_last)
    textlora.classify(run_dir, ["Stocks rallied as the Fed held rates."])
    textlora.predict(run_dir, "test.csv", "submission.csv")
    textlora.evaluate(run_dir, "test.csv")

Data files are read with the options the run was trained with (columns, text columns, label column).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

PathLike = Union[str, Path]


def load_config(path: Optional[PathLike] = None, overrides: Sequence[str] = ()):
    """Defaults < the YAML file at ``path`` < ``overrides`` (``"train.epochs=2"``); returns a RunConfig."""
    from textlora.config import load_config as load

    return load(Path(path) if path is not None else None, tuple(overrides))


def train(config) -> Path:
    """Train one run (a RunConfig, or a YAML path) into a new run folder; returns that folder."""
    from textlora.training.recipe import train as run_training

    if not hasattr(config, "train"):
        config = load_config(config)
    return run_training(config)


def load_run(run_dir: PathLike, device: str = "auto", base_model: Optional[str] = None):
    """A run (or exported) folder loaded for inference: config, labels, tokenizer, model (see run.load.LoadedRun)."""
    from textlora.run.load import load_run as load

    return load(Path(run_dir), device=device, base_model=base_model)


def _source(run_dir: PathLike, data: PathLike):
    from textlora.run.load import data_source_like_training

    return data_source_like_training(Path(run_dir), str(data))


def evaluate(run_dir: PathLike, data: PathLike, output: Optional[PathLike] = None,
             base_model: Optional[str] = None, max_length: Optional[int] = None) -> dict:
    """Metrics of the run's best model on the labelled file ``data``; written to ``output`` (default
    ``RUN/evaluations/<data>.json``) and returned. ``max_length``: read texts up to this many tokens
    instead of the run's ``model.max_length``."""
    from textlora.commands.evaluate import evaluate_many

    return evaluate_many(Path(run_dir), [_source(run_dir, data)], Path(output) if output else None,
                         base_model=base_model, max_length=max_length)[0]


def predict(run_dir: PathLike, data: PathLike, output: PathLike, base_model: Optional[str] = None,
            max_length: Optional[int] = None) -> dict:
    """Write ``output`` as CSV ``ID,Label`` for every row of ``data``; returns what was written (rows, path)."""
    from textlora.commands.predict import predict as run_predict

    return run_predict(Path(run_dir), _source(run_dir, data), Path(output), base_model=base_model,
                       max_length=max_length)


def classify(run_dir: PathLike, texts: Sequence[str], base_model: Optional[str] = None,
             max_length: Optional[int] = None) -> list[dict]:
    """One dict per text (also printed): ``text``, ``label`` (its name), ``label_id`` and the class probabilities."""
    from textlora.commands.predict import classify as run_classify

    return run_classify(Path(run_dir), list(texts), base_model=base_model, max_length=max_length)


def report(run_dir: PathLike) -> Path:
    """Figures and report.md of a finished run, from its folder; returns the path of report.md."""
    from textlora.commands.report import write_report

    return write_report(Path(run_dir))


def average(run_dir: PathLike, steps: Optional[Sequence[int]] = None, last: Optional[int] = None,
            greedy: bool = False, metric: Optional[str] = None, output: Optional[PathLike] = None,
            with_runs: Sequence[PathLike] = (), top: Optional[int] = None,
            toward_start: Sequence[float] = ()) -> Path:
    """The mean of the run's kept checkpoints (``greedy``: the greedy soup on ``metric``, of the ``top`` best-logged
    candidates) as a new run folder (default ``RUN-avg``); returns that folder. ``with_runs``: runs of the same
    recipe whose kept checkpoints join the candidates (``RUN@1440,1448``: only those steps). ``toward_start``:
    fractions of the way from the start of training to the average, the best on ``metric`` written (WiSE-FT). See
    ``textlora average --help``."""
    from textlora.commands.average import average as run_average

    return run_average(Path(run_dir), steps, last, greedy, Path(output) if output else None, metric=metric,
                       with_runs=[Path(run) for run in with_runs], top=top, toward_start=toward_start)
