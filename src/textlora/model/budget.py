"""Trainable-parameter accounting: exact counts by group, the budget check, and nearby configs that fit.

Counts come from the real peft-wrapped model (built on the meta device when only a count is
needed), so they are exactly what training will optimise.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from itertools import product
from typing import Iterable, Optional, Sequence

import torch

from textlora.config import ModelConfig
from textlora.errors import BudgetError, ConfigError
from textlora.data.labels import LabelMap
from textlora.model.build import LAYER_PATTERN, BuiltModel, build_counting_twin, build_model, module_path
from textlora.model.targets import adapted_linears, matched_types


@dataclass
class Breakdown:
    """Trainable parameters by group (``lora: attention.self.query``, ``head: classifier``, ``fresh: …``)."""

    groups: "OrderedDict[str, int]"
    budget: int
    note: Optional[str] = None
    """Said with the counts when they may be short: fresh modules could not be counted without loading weights."""

    @property
    def total(self) -> int:
        return sum(self.groups.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def as_dict(self) -> dict:
        counts = {"groups": dict(self.groups), "total": self.total, "budget": self.budget, "fits": self.fits}
        return {**counts, "note": self.note} if self.note else counts

    def table(self) -> str:
        width = max(len(g) for g in self.groups) if self.groups else 10
        lines = [f"{'group':<{width}}  {'params':>11}"]
        lines += [f"{g:<{width}}  {n:>11,}" for g, n in self.groups.items()]
        lines.append(f"{'total trainable':<{width}}  {self.total:>11,}")
        verdict = "fits" if self.fits else "OVER"
        lines.append(f"{'budget':<{width}}  {self.budget:>11,}  ({verdict}: {self.total / self.budget:.1%} of budget)")
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)


FRESH_NOT_COUNTED = ("fresh modules not counted: weights the checkpoint lacks (a BERT pooler, say) also train, but "
                     "which those are is read only from a local folder's safetensors; --pretrained loads the "
                     "checkpoint and counts them")


def trainable_breakdown(built: BuiltModel, budget: int) -> Breakdown:
    """Group the model's trainable parameters by LoRA module type, head, and fresh modules."""
    groups: "OrderedDict[str, int]" = OrderedDict()
    for name, param in built.model.named_parameters():
        if not param.requires_grad:
            continue
        group = _group_of(name, built)
        groups[group] = groups.get(group, 0) + param.numel()
    ordered = OrderedDict(sorted(groups.items(), key=lambda kv: (not kv[0].startswith("lora"), kv[0])))
    return Breakdown(groups=ordered, budget=budget, note=None if built.fresh_known else FRESH_NOT_COUNTED)


def _group_of(name: str, built: BuiltModel) -> str:
    if ".lora_" in name:
        module = name.split(".lora_")[0]
        match = LAYER_PATTERN.search(module + ".")  # the module type is what follows "layer.N."
        return "lora: " + (module[match.end():] if match else module.rsplit(".", 1)[-1])
    path = module_path(name)
    for head in built.head_modules:
        if path.startswith(head + "."):
            return f"head: {head}"
    for fresh in built.fresh_modules:
        if path.startswith(fresh + "."):
            return f"fresh: {fresh}"
    return f"other: {path.rsplit('.', 1)[0]}"


def count_model(cfg: ModelConfig, label_map: Optional[LabelMap] = None, num_labels: int = 2,
                pretrained: bool = False) -> tuple[Breakdown, BuiltModel]:
    """Exact trainable counts; ``pretrained=False`` builds on the meta device (no weights read).

    Without ``pretrained``, fresh modules are found from a local folder's safetensors headers; for other
    models they are left out and the breakdown's ``note`` says so.
    """
    built = build_model(cfg, label_map, pretrained=pretrained, num_labels=num_labels)
    return trainable_breakdown(built, cfg.max_trainable_params), built


def lora_params_for(base: torch.nn.Module, cfg: ModelConfig) -> int:
    """LoRA parameters that ``cfg`` would add to ``base``: r * (in + out) per matched Linear.

    ``base`` may already carry LoRA layers: those wrap the Linear as ``base_layer``.
    """
    return sum(cfg.lora_r * (linear.in_features + linear.out_features) for _, linear in adapted_linears(base, cfg))


@dataclass(frozen=True)
class Placement:
    """Where LoRA goes: target modules and layers, what they adapt, and the LoRA parameters per unit of rank."""

    target_modules: tuple[str, ...]
    layers: Optional[str]
    matched: str
    """The module types adapted in each layer, short names in role order (``q,v``)."""
    per_rank: int
    """LoRA parameters at r=1; LoRA is linear in r: r * (in + out) per adapted Linear."""


def placements(base: torch.nn.Module, cfg: ModelConfig, target_sets: Iterable[Sequence[str]],
               layer_ranges: Iterable[Optional[str]]) -> list[Placement]:
    """The search both ``plan`` and the over-budget suggestions make: each (targets, layers) combination, in
    order, counted exactly on ``base``; ranks are then a multiple of :attr:`Placement.per_rank`."""
    found = []
    for targets, layers in product(target_sets, list(layer_ranges)):
        probe = replace(cfg, lora_r=1, target_modules=list(targets), layers=layers)
        found.append(Placement(tuple(targets), layers, matched_types(base, probe), lora_params_for(base, probe)))
    return found


def nearest_fits(cfg: ModelConfig, built: BuiltModel, non_lora: int, limit: int = 5) -> list[tuple[ModelConfig, int]]:
    """Configurations one change away from ``cfg`` (lower rank, fewer layers, fewer modules, linear head) that fit.

    Returns up to ``limit`` (config, total trainable) pairs, the largest first. Their target modules are in the
    model's own names (``built.target_modules``: MPNet's ``q``/``v`` for ``query``/``value``).
    """
    base = built.model.get_base_model()
    cfg = replace(cfg, target_modules=list(built.target_modules or cfg.target_modules))
    num_layers = getattr(base.config, "num_hidden_layers", 12)
    targets = list(cfg.target_modules)
    current = cfg.layer_indices() or list(range(num_layers))
    fewer_layers = [f"{current[-keep]}-{current[-1]}" for keep in range(len(current) - 1, 0, -1)]
    dropped = [[t for t in targets if t != drop] for drop in targets] if len(targets) > 1 else []
    (here,) = placements(base, cfg, [targets], [cfg.layers])
    candidates = [(replace(cfg, lora_r=r), r * here.per_rank) for r in (32, 16, 8, 4, 2, 1) if r < cfg.lora_r]
    for place in placements(base, cfg, [targets], fewer_layers) + placements(base, cfg, dropped, [cfg.layers]):
        candidates.append((replace(cfg, layers=place.layers, target_modules=list(place.target_modules)),
                           cfg.lora_r * place.per_rank))
    fits = [(candidate, non_lora + lora) for candidate, lora in candidates
            if non_lora + lora <= cfg.max_trainable_params]
    if cfg.head != "linear":
        light = _linear_head_total(cfg, built)
        if light is not None and light[1] <= cfg.max_trainable_params:
            fits.append(light)
    fits.sort(key=lambda item: -item[1])
    return fits[:limit]


def _linear_head_total(cfg: ModelConfig, built: BuiltModel) -> Optional[tuple[ModelConfig, int]]:
    """``cfg`` with ``model.head=linear`` and its exact count; None where the architecture has no linear head.

    The head changes which modules exist (a BERT pooler, fresh or not, is replaced), so the model is rebuilt
    on the meta device and counted like any other, keeping the fresh modules ``built`` found.
    """
    candidate = replace(cfg, head="linear")
    try:
        twin = build_counting_twin(built, candidate)
    except ConfigError:  # model.head=linear on an architecture heads.py does not handle
        return None
    return candidate, trainable_breakdown(twin, cfg.max_trainable_params).total


def describe_lora(cfg: ModelConfig) -> str:
    layers = cfg.layers if cfg.layers is not None else "all"
    return f"r={cfg.lora_r} on {'/'.join(cfg.target_modules)} of layers {layers}"


def _overrides(c: ModelConfig, cfg: ModelConfig) -> str:
    """The ``key=value`` overrides that turn ``cfg`` into ``c``, as they are typed on the command line."""
    layers = "null" if c.layers is None else c.layers
    text = f"model.lora_r={c.lora_r} model.layers={layers} model.target_modules=[{','.join(c.target_modules)}]"
    return text + (f" model.head={c.head}" if c.head != cfg.head else "")


def enforce_budget(cfg: ModelConfig, breakdown: Breakdown, built: BuiltModel) -> None:
    """Refuse a configuration over budget, with the breakdown and the nearest configurations that fit."""
    if breakdown.fits:
        return
    non_lora = sum(n for g, n in breakdown.groups.items() if not g.startswith("lora"))
    suggestions = nearest_fits(cfg, built, non_lora)
    lines = [f"{describe_lora(cfg)} has {breakdown.total:,} trainable parameters, over the budget of "
             f"{cfg.max_trainable_params:,} (model.max_trainable_params).", breakdown.table()]
    if built.targets_note:
        lines.append(built.targets_note)
    if suggestions:
        lines.append("Nearest configurations that fit:")
        lines += [f"  {describe_lora(c)}{', ' + c.head + ' head' if c.head != cfg.head else ''}: {n:,}   "
                  f"({_overrides(c, cfg)})" for c, n in suggestions]
    else:
        lines.append("No configuration one change away fits: the head alone may exceed the budget; raise "
                     "model.max_trainable_params or use a smaller model.")
    raise BudgetError("\n".join(lines))
