"""Run configuration: a few small frozen dataclasses, merged as defaults < YAML file < overrides.

OmegaConf does the merging and the type checks (an unknown key or a value of the wrong type is
an error that names the key); ``__post_init__`` checks ranges and allowed values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from textlora.errors import ConfigError


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def _one_of(value: str, key: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, f"got {value!r}, allowed values are {', '.join(allowed)}")


def parse_layer_range(spec: str, key: str) -> list[int]:
    """Turn ``"8-11"`` or ``"3"`` into ``[8, 9, 10, 11]`` / ``[3]``."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(spec))
    _require(match is not None, key, f"layer range {spec!r} is not of the form 'A-B' or 'A'")
    start, end = int(match.group(1)), int(match.group(2) or match.group(1))
    _require(start <= end, key, f"layer range {spec!r} runs backwards")
    return list(range(start, end + 1))


METRICS = ("accuracy", "macro_f1", "loss")
"""Validation metrics that ``train.metric_for_best`` can name (and each set's, as ``SET/metric``)."""
COMBINED = ("mean", "min")
"""``mean/<metric>`` and ``min/<metric>``: over validation and every ``data.eval_sets`` set (accuracy, macro_f1)."""


def parse_metric_for_best(spec: str) -> tuple[Optional[str], str]:
    """Split ``train.metric_for_best`` into (scope, metric).

    Returns:
        ``(None, metric)`` for the validation split (``accuracy``), ``(name, metric)`` for an eval set
        (``shifted/accuracy``) and ``("mean"|"min", metric)`` for a combination (``min/accuracy``).
    """
    key = "train.metric_for_best"
    scope, _, metric = str(spec).rpartition("/")
    allowed = "accuracy, macro_f1, loss, SET/accuracy, SET/macro_f1, SET/loss (SET: a data.eval_sets name), " \
              "mean/accuracy, mean/macro_f1, min/accuracy or min/macro_f1"
    _require(metric in METRICS and "/" not in scope and (scope or "/" not in str(spec)), key,
             f"got {spec!r}, allowed values are {allowed}")
    _require(scope not in COMBINED or metric != "loss", key,
             f"got {spec!r}: combinations are over accuracy or macro_f1; use {scope}/accuracy, "
             f"{scope}/macro_f1 or a single set's loss")
    return (scope or None), metric


def _check_eval_set_name(name: str) -> None:
    key = f"data.eval_sets.{name}"
    _require(bool(str(name).strip()), "data.eval_sets", "a set name is empty; name each set, e.g. shifted")
    _require("/" not in name and "\\" not in name and not name.startswith("."), key,
             "a set name may not contain '/' or '\\' or start with '.' (it names files in the run folder)")
    meaning = "the validation split" if name == "validation" else "a combination in train.metric_for_best"
    _require(name not in ("validation",) + COMBINED, key, f"{name!r} is reserved ({meaning}); choose another name")


@dataclass(frozen=True)
class DataSource:
    """Where one split's rows come from and how to read them."""

    path: str = ""
    """A local file (.csv, .tsv, .jsonl, .json, .parquet, .pkl) or a hub dataset name such as ``ag_news``."""
    split: Optional[str] = None
    """Split to take from a hub dataset (``train``/``test``); ignored for files."""
    column_names: Optional[List[str]] = None
    """Names for the columns of a CSV without a header row (AG News: ``[label, title, description]``)."""
    text_columns: List[str] = field(default_factory=lambda: ["text"])
    """Columns joined with a space to make the text (AG News: ``[title, description]``)."""
    label_column: str = "label"
    """Column holding the label (int ids, 0- or 1-based, or strings)."""

    def __post_init__(self):
        _require(len(self.text_columns) > 0, "text_columns", "name at least one column")


@dataclass(frozen=True)
class DataConfig:
    """Training data, validation split and cleaning."""

    train: DataSource = field(default_factory=DataSource)
    """Training rows."""
    validation: Optional[DataSource] = None
    """Separate validation rows; when null a stratified split is carved from ``train``."""
    test: Optional[DataSource] = None
    """Optional held-out rows evaluated once with the best model at the end of training."""
    validation_size: float = 0.05
    """Carved validation split: a fraction (< 1) or a row count (>= 1); stratified and seeded."""
    min_words: Optional[int] = None
    """Length filter on training rows only: drop texts with fewer words (S1 uses 20)."""
    max_words: Optional[int] = None
    """Length filter on training rows only: drop texts with more words (S1 uses 70)."""
    max_train_rows: Optional[int] = None
    """Keep a seeded, stratified sample of N training rows (quick runs)."""
    label_names: Optional[List[str]] = None
    """Class names in id order; default: the sorted string labels, or ``class_0..`` for int labels."""
    label_base: str = "auto"
    """For int labels: ``auto`` (1-based when 0 is absent and the max equals the class count), ``0`` or ``1``."""
    clean_backslashes: bool = True
    """Replace AG News' ``\\`` line-break escapes with spaces (applied at train and predict time alike)."""
    eval_sets: Dict[str, DataSource] = field(default_factory=dict)
    """Extra labelled sets evaluated at every evaluation next to validation and, with the best model, at the end
    (``RUN/eval_sets/NAME.json``); never trained on. ``{NAME: {path: ..., text_columns: [text], label_column: label}}``,
    each with the keys of ``data.train``; ``train.metric_for_best`` may name ``NAME/accuracy``."""

    def __post_init__(self):
        for name in self.eval_sets:
            _check_eval_set_name(name)
        _one_of(self.label_base, "data.label_base", ("auto", "0", "1"))
        _require(self.validation_size > 0, "data.validation_size", "must be > 0 (fraction < 1 or row count)")
        for key in ("min_words", "max_words", "max_train_rows"):
            value = getattr(self, key)
            _require(value is None or value >= 0, f"data.{key}", "must be >= 0 or null")
        if self.min_words is not None and self.max_words is not None:
            _require(self.min_words <= self.max_words, "data.min_words", "must be <= data.max_words")


# model.head_init=probe's defaults: a sample of rows, and strengths from strong to weak (training/head_probe.py).
PROBE_ROWS = 4096
PROBE_CS = (0.1, 0.3, 1.0, 3.0)


@dataclass(frozen=True)
class ModelConfig:
    """The encoder and its LoRA adapter."""

    name_or_path: str = "roberta-base"
    """Hub id, local folder or ``pkg:PACKAGE/folder`` of any ``AutoModelForSequenceClassification`` encoder; the run
    folder keeps it as given (a relative path is read from the current directory), ``--base-model`` points a run at
    another copy."""
    max_length: int = 128
    """Tokens per text after truncation (truncated texts are counted and reported)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA input."""
    target_modules: List[str] = field(default_factory=lambda: ["query", "value"])
    """Module names that get LoRA (roberta/bert: query, key, value, attention.output.dense, intermediate.dense, output.dense;
    mpnet: q, k, v, o, intermediate.dense, output.dense). A name the model lacks that names a role (query, key, value,
    attention-output, ffn-in, ffn-out) is mapped to the model's own name for it, and the log says so."""
    layers: Optional[str] = None
    """Encoder layers that get LoRA, e.g. ``"8-11"``; null means all layers."""
    max_trainable_params: int = 1_000_000
    """Budget enforced before training: more trainable parameters than this is refused."""
    head: str = "standard"
    """Classification head: ``standard`` (the model class's own), ``linear`` (dropout + one Linear on the first
    token's final hidden state: 3,076 parameters for roberta-base and 4 classes instead of 593,668) or ``mean`` (as
    ``linear``, on the mean of every real token's final hidden state: the vector sentence-transformers encoders such
    as all-mpnet-base-v2 were trained to fill; see docs/robustness.md)."""
    head_init: str = "random"
    """How the head starts: ``random`` (as transformers initialises a fresh head) or ``probe`` (fit first, alone, on
    the frozen encoder's features of a sample of training rows by logistic regression, its regularisation chosen on
    the validation split; then LoRA and head train together from there: LP-FT, which moves the encoder less and
    keeps more accuracy on text unlike the training rows, docs/robustness.md). ``probe`` needs ``model.head`` linear
    or mean."""
    probe_rows: int = PROBE_ROWS
    """With ``head_init: probe``: how many training rows (a sample the seed draws; 0: every row) the probe is fitted
    on. One forward pass over them runs before training."""
    probe_cs: List[float] = field(default_factory=lambda: list(PROBE_CS))
    """With ``head_init: probe``: the inverse regularisation strengths (logistic regression's C) tried; the one with
    the best validation accuracy is kept. Smaller is stronger: it keeps more accuracy on text unlike the training
    rows (``benchmarks/probe_tradeoff.py``, docs/robustness.md)."""
    base_dtype: str = "auto"
    """Dtype the frozen pretrained weights are stored in: ``auto`` (bf16 where the hardware multiplies bf16 natively:
    CUDA compute capability 8+, CPUs with avx512_bf16 or AMX; fp16 on older GPUs under fp16 autocast; fp32 elsewhere
    and when ``train.mixed_precision`` is ``no``), ``fp32``, ``bf16`` or ``fp16`` (GPU). LoRA, the head, the optimizer
    state and the loss stay fp32 whatever this says; inference loads the base the same way. See precision.py."""
    first_token_last_layer: bool = True
    """Run the last encoder layer for the first token only, the one the head reads (keys/values still from every
    token). Exact, not an approximation; skips ~1/N of an N-layer encoder's work. Applied to BERT/RoBERTa-style
    encoders with SDPA or eager attention and to MPNet; other models run stock (the train log says which)."""

    def __post_init__(self):
        _require(self.lora_r >= 1, "model.lora_r", "must be >= 1")
        _require(self.lora_alpha > 0, "model.lora_alpha", "must be > 0")
        _require(0 <= self.lora_dropout < 1, "model.lora_dropout", "must be in [0, 1)")
        _require(8 <= self.max_length <= 8192, "model.max_length", "must be between 8 and 8192")
        _require(len(self.target_modules) > 0, "model.target_modules", "name at least one module")
        _require(self.max_trainable_params > 0, "model.max_trainable_params", "must be > 0")
        _one_of(self.head, "model.head", ("standard", "linear", "mean"))
        _one_of(self.head_init, "model.head_init", ("random", "probe"))
        if self.head_init == "probe":
            _require(self.head in ("linear", "mean"), "model.head_init",
                     "probe needs model.head linear or mean (one Linear the probe can fit)")
        _require(self.probe_rows >= 0, "model.probe_rows", "must be >= 0 (0: every training row)")
        _require(len(self.probe_cs) > 0 and all(c > 0 for c in self.probe_cs), "model.probe_cs",
                 "name at least one strength, each > 0 (e.g. [0.1, 0.3, 1.0, 3.0])")
        _one_of(self.base_dtype, "model.base_dtype", ("auto", "fp32", "bf16", "fp16"))
        if self.layers is not None:
            parse_layer_range(self.layers, "model.layers")

    def layer_indices(self) -> Optional[list[int]]:
        return None if self.layers is None else parse_layer_range(self.layers, "model.layers")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning rates and schedule."""

    name: str = "adamw"
    """``adamw`` (torch's fused kernel on CPU and CUDA), ``rmsprop`` or ``sgd``."""
    lr: float = 1e-4
    """Learning rate of every trainable parameter not covered by ``layer_lrs`` / ``head_lr``."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) or L2 (RMSprop, SGD) weight decay; never applied to biases and LayerNorms."""
    momentum: float = 0.0
    """Momentum for RMSprop and SGD."""
    layer_lrs: Dict[str, float] = field(default_factory=dict)
    """Layer-wise learning rates: ``{"0-3": 1e-5, "4-7": 3e-4, "8-11": 5e-4}``."""
    head_lr: Optional[float] = None
    """Learning rate of the classification head (and other modules_to_save); default ``lr``."""
    scheduler: str = "linear"
    """``linear``, ``cosine`` or ``constant`` (all with warm-up)."""
    warmup_ratio: float = 0.0
    """Warm-up as a fraction of all optimizer steps (ignored when ``warmup_steps`` > 0)."""
    warmup_steps: int = 0
    """Warm-up in optimizer steps."""
    max_grad_norm: Optional[float] = None
    """Clip the gradient norm to this value; null disables clipping. HF Trainer clips at 1.0 unless told otherwise,
    so the seeds' configs (S1 and S2) state 1.0."""

    def __post_init__(self):
        _one_of(self.name, "optim.name", ("adamw", "rmsprop", "sgd"))
        _one_of(self.scheduler, "optim.scheduler", ("linear", "cosine", "constant"))
        _require(self.lr > 0, "optim.lr", "must be > 0")
        _require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _require(0 <= self.warmup_ratio < 1, "optim.warmup_ratio", "must be in [0, 1)")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _require(self.max_grad_norm is None or self.max_grad_norm > 0, "optim.max_grad_norm", "must be > 0 or null")
        for spec, lr in self.layer_lrs.items():
            parse_layer_range(spec, f"optim.layer_lrs.{spec}")
            _require(lr >= 0, f"optim.layer_lrs.{spec}", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """The loop: batches, precision, evaluation, checkpoints."""

    epochs: float = 3
    """Passes over the training rows (fractions allowed, e.g. 0.5)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    batch_size: int = 32
    """Rows per forward pass, in total: with N processes (torchrun) each one takes every N-th row of every batch."""
    grad_accum: int = 1
    """Forward passes per optimizer step."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    mixed_precision: str = "auto"
    """``auto`` (bf16 on GPUs that have it, fp16 on older GPUs; on CPU bf16 only with AMX tiles, else fp32),
    ``bf16``, ``fp16`` or ``no`` (also ``fp32``). The run's ``summary.json`` records what was used."""
    device: str = "auto"
    """``auto`` (CUDA, then MPS, then CPU), ``cuda``, ``mps`` or ``cpu``."""
    eval_every_steps: Optional[int] = None
    """Evaluate every N optimizer steps; null evaluates at the end of every epoch."""
    log_every_steps: int = 20
    """Write a training line to metrics.jsonl every N optimizer steps."""
    metric_for_best: str = "accuracy"
    """Metric that picks the best model and drives ``patience``: ``accuracy``, ``macro_f1`` or ``loss`` of the
    validation split; ``NAME/accuracy`` (``/macro_f1``, ``/loss``) of the ``data.eval_sets`` set NAME; or
    ``mean/accuracy``, ``min/accuracy`` (``/macro_f1``): the mean or the lowest over validation and every set."""
    patience: Optional[int] = None
    """Early stopping: stop after this many evaluations without improvement; null disables it."""
    keep_last: int = 2
    """Checkpoints kept on disk (the best one is always kept as well); keep more to average them afterwards
    (``textlora average``, [robustness.md](robustness.md))."""
    seed: int = 42
    """Seeds the split, data order, initialisation and dropout."""
    output_dir: str = "runs"
    """Parent folder of run folders."""
    run_name: Optional[str] = None
    """Run folder name; default: config file name plus a timestamp."""
    quiet: bool = False
    """No progress bars (log lines only), for batch jobs."""
    trackers: List[str] = field(default_factory=list)
    """Experiment trackers fed through accelerate: ``tensorboard`` (logs in RUN/tensorboard) and/or ``mlflow``
    (``MLFLOW_TRACKING_URI``); off when empty. Needs ``pip install 'textlora[tensorboard]'`` / ``[mlflow]``."""
    num_threads: Optional[int] = None
    """CPU threads for torch; null keeps torch's default."""
    max_tokens_per_batch: Optional[int] = None
    """Also end a batch before rows x its longest text exceeds this (caps memory on long texts); null: rows only."""
    length_pool_batches: int = 64
    """Training batches are cut from pools of this many batches of shuffled rows, each pool sorted by length (little
    padding); the batches are then shuffled. 1: batches of random rows, each padded to its own longest."""
    prefix_cache: str = "auto"
    """Frozen-prefix cache when LoRA starts above layer 0 (e.g. ``model.layers: 8-11``): the embeddings and layers
    below are run once per text in eval mode, their output is kept in half precision and only the top layers run
    each step. The one difference from uncached training: no dropout inside the cached layers. ``auto`` (on when
    the lowest trained layer is above 0 and the cache fits ``prefix_cache_max_gb``), ``on`` (error if it cannot
    be used) or ``off``."""
    prefix_cache_dir: Optional[str] = None
    """Keep the prefix cache in a memory-mapped file under this folder instead of in memory (deleted after training)."""
    prefix_cache_max_gb: float = 4.0
    """Largest prefix cache allowed, in GB (estimate: real tokens x hidden size x 2 bytes)."""
    compile: bool = False
    """``torch.compile`` the model (GPU; pays off on long runs; first steps are slower while it compiles). On CPU it
    was measured slower than without it (BENCHMARKS.md, train_speed-cpu-compile), and the train log says so.
    A speedup: off with ``train.speedups=false``."""
    speedups: bool = True
    """Apply the optional speedups (``textlora.speed``: first-token last layer, CPU dropout masks, prefix cache,
    compile, the faster malloc's note), each per its own switch. ``false``: none of them, the stock computation
    (slower, same model); for checking a result against stock transformers. What each gains: BENCHMARKS.md."""
    fast_cpu_dropout: bool = True
    """Training on CPU: dropout masks (hidden states, LoRA inputs, head and, for BERT-style models, attention
    probabilities in textlora's own attention function instead of SDPA's math path; MPNet's in its own attention
    dropout modules) from 15-bit integers of torch's
    generator instead of ``bernoulli_``: the keep probability exact to 1/32768, another random stream (still seeded),
    faster steps (BENCHMARKS.md). ``false``: torch's own dropout and SDPA. No effect on GPUs or outside training."""

    def __post_init__(self):
        _require(self.epochs > 0, "train.epochs", "must be > 0")
        _require(self.max_steps is None or self.max_steps > 0, "train.max_steps", "must be > 0 or null")
        _require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _require(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        # YAML reads a bare `no` (and `off`, `false`) as a boolean, which reaches this str field as 'False'.
        if self.mixed_precision in ("False", "fp32"):
            object.__setattr__(self, "mixed_precision", "no")  # frozen dataclass
        _one_of(self.mixed_precision, "train.mixed_precision", ("auto", "bf16", "fp16", "no"))
        _one_of(self.device, "train.device", ("auto", "cuda", "mps", "cpu"))
        parse_metric_for_best(self.metric_for_best)
        _require(self.eval_every_steps is None or self.eval_every_steps > 0, "train.eval_every_steps", "must be > 0 or null")
        _require(self.log_every_steps > 0, "train.log_every_steps", "must be > 0")
        _require(self.patience is None or self.patience > 0, "train.patience", "must be > 0 or null")
        _require(self.keep_last >= 1, "train.keep_last", "must be >= 1")
        for tracker in self.trackers:
            _one_of(tracker, "train.trackers", ("tensorboard", "mlflow"))
        _require(self.max_tokens_per_batch is None or self.max_tokens_per_batch > 0, "train.max_tokens_per_batch",
                 "must be > 0 or null")
        _require(self.length_pool_batches >= 1, "train.length_pool_batches", "must be >= 1 (1: no length grouping)")
        # YAML 1.1 reads a bare on/off as a boolean, which reaches here as "True"/"False".
        object.__setattr__(self, "prefix_cache", {"true": "on", "false": "off"}.get(str(self.prefix_cache).lower(),
                                                                                   self.prefix_cache))
        _one_of(self.prefix_cache, "train.prefix_cache", ("auto", "on", "off"))
        _require(self.prefix_cache_max_gb > 0, "train.prefix_cache_max_gb", "must be > 0")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; saved resolved as ``config.yaml`` in the run folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        check_metric_for_best(self)


def check_metric_for_best(config: RunConfig) -> None:
    """A ``train.metric_for_best`` that names an eval set needs that set in ``data.eval_sets``."""
    scope, metric = parse_metric_for_best(config.train.metric_for_best)
    sets = config.data.eval_sets
    if scope in COMBINED:
        _require(bool(sets), "train.metric_for_best", f"{scope}/{metric} combines validation with data.eval_sets, "
                 f"which is empty; add a set to data.eval_sets or use {metric}")
    elif scope is not None:
        _require(scope in sets, "train.metric_for_best",
                 f"{scope}/{metric} names the eval set {scope!r}, but data.eval_sets has "
                 f"{', '.join(sets) or 'no sets'}; add data.eval_sets.{scope} or name a set it has")


def load_config(path: Optional[Path] = None, overrides: tuple[str, ...] = ()) -> RunConfig:
    """Merge defaults < YAML file < ``key=value`` overrides into a validated :class:`RunConfig`.

    Relative data and model paths in the YAML file are kept as written: they are resolved
    against the current directory, like every path given on the command line.
    """
    schema = OmegaConf.structured(RunConfig)
    layers = [(schema, "")]
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder; pass a YAML file to --config, such as "
                              "configs/quickstart.yaml")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml errors come in several types
            raise ConfigError(f"config file {path} is not valid YAML ({' '.join(str(exc).split())}); "
                              "fix the line it names") from None
        if not isinstance(loaded, DictConfig):  # a top-level list would fail the merge with a bare TypeError
            raise ConfigError(f"config file {path} must be a mapping of sections (model:, data:, optim:, train:), "
                              f"not a {type(loaded).__name__}")
        layers.append((loaded, f" in {path}"))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=2)")
        try:
            layers.append((OmegaConf.from_dotlist([item]), f" in the override {item!r}"))
        except Exception as exc:  # the value is parsed as YAML: an unclosed [ or { fails there
            raise ConfigError(f"override {item!r}: its value is not valid YAML ({' '.join(str(exc).split())}); "
                              "close every [ and {, and put a space after each colon in a mapping "
                              "(e.g. 'model.target_modules=[query,value]', 'data.test={path: test.csv}')") from None
    # Merged one layer at a time, so that an error names the layer that caused it: the file or an override.
    merged, where = layers[0][0], ""
    try:
        for layer, where in layers[1:]:
            merged = OmegaConf.merge(merged, layer)
        where = f" in {path}" if path is not None else ""
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid configuration{where}: {_omegaconf_message(exc)}") from None


def _omegaconf_message(exc: OmegaConfBaseException) -> str:
    # OmegaConf appends a multi-line "full_key/object_type" trailer; the first line says it all.
    text = str(exc).strip().splitlines()[0]
    key = getattr(exc, "full_key", None)
    if key and "is not a ListConfig" in text:  # OmegaConf's words for a scalar given where a list belongs
        text = f"expects a list, such as {key}=[a,b] on the command line or `{key.split('.')[-1]}: [a, b]` in YAML"
    return f"key '{key}': {text}" if key else text


def config_to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def config_from_yaml_file(path: Path) -> RunConfig:
    """Read a run folder's resolved ``config.yaml`` back (no overrides)."""
    return load_config(path)
