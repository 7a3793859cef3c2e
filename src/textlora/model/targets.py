"""LoRA targets by role: an encoder layer's Linear modules under the names the model itself gives them.

Every encoder layer has the same six Linear roles, named differently by each architecture:

- query: ``attention.self.query`` (BERT, RoBERTa, ELECTRA ...), ``attention.attn.q`` (MPNet), ``attention.q_lin``
  (DistilBERT); key and value alike;
- attention-output: ``attention.output.dense``, ``attention.attn.o``, ``attention.out_lin``;
- ffn-in: ``intermediate.dense`` (BERT and MPNet), ``ffn.lin1``; ffn-out: ``output.dense``, ``ffn.lin2``.

peft matches ``model.target_modules`` as name suffixes, so ``query`` adapts nothing in MPNet. A target that
matches no Linear module of the model but names a role (``query``, ``q``, another architecture's name for
it) is mapped to the model's own name for that role, and the mapping is said; anything else is an error
listing the model's names. ``plan`` and the over-budget suggestions build their target lists from roles.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

import torch

from textlora.config import ModelConfig
from textlora.errors import ConfigError

ROLES = ("query", "key", "value", "attention-output", "ffn-in", "ffn-out")
SHORT = {"query": "q", "key": "k", "value": "v", "attention-output": "o", "ffn-in": "ffn-in", "ffn-out": "ffn-out"}
"""How plan's table names a role (``LoRA on q,v``)."""
KNOWN_NAMES = {
    "query": ("attention.self.query", "attention.attn.q", "attention.q_lin"),
    "key": ("attention.self.key", "attention.attn.k", "attention.k_lin"),
    "value": ("attention.self.value", "attention.attn.v", "attention.v_lin"),
    "attention-output": ("attention.output.dense", "attention.attn.o", "attention.out_lin"),
    "ffn-in": ("intermediate.dense", "ffn.lin1"),
    "ffn-out": ("output.dense", "ffn.lin2"),
}
"""A layer's Linear modules by role, named as they follow ``layer.N.`` in each architecture."""


def _matches(name: str, target: str) -> bool:
    """peft's matching of one ``target_modules`` entry against a module name: equal, or a dotted suffix."""
    return name == target or name.endswith("." + target)


def linear_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """``(full name, Linear)`` for each Linear module of the model; one LoRA wraps counts once, under its own
    name, with the Linear it wraps (its ``base_layer``)."""
    found = []
    for name, module in model.named_modules():
        linear = getattr(module, "base_layer", module)
        if isinstance(linear, torch.nn.Linear) and not name.endswith("base_layer"):
            found.append((name, linear))
    return found


def _linear_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in linear_modules(model)]


def adapted_linears(model: torch.nn.Module, cfg: ModelConfig) -> list[tuple[str, torch.nn.Linear]]:
    """The ``(full name, Linear)`` pairs LoRA with ``cfg`` adapts in ``model`` (``model.target_modules`` in the
    layers of ``model.layers``), matched by peft itself, as training will match them."""
    from peft.tuners.tuners_utils import check_target_module_exists

    from textlora.model.build import lora_config

    config = lora_config(cfg, [])
    return [(name, linear) for name, linear in linear_modules(model) if check_target_module_exists(config, name)]


def matched_types(model: torch.nn.Module, cfg: ModelConfig) -> str:
    """Short names of the module types ``cfg.target_modules`` adapts in one layer, in role order (``q,v``)."""
    from textlora.model.build import LAYER_PATTERN, layer_index

    found = [short_name(name[LAYER_PATTERN.search(name).end():])
             for name, _ in adapted_linears(model, replace(cfg, layers=None)) if layer_index(name) == 0]
    order = list(SHORT.values())
    return ",".join(sorted(found, key=lambda s: order.index(s) if s in order else len(order)))


def layer_linears(model: torch.nn.Module) -> list[str]:
    """The Linear modules of the first encoder layer, named from inside the layer (``attention.attn.q``)."""
    from textlora.model.build import LAYER_PATTERN, layer_index

    return [name[LAYER_PATTERN.search(name).end():] for name in _linear_names(model) if layer_index(name) == 0]


def role_of(suffix: str) -> Optional[str]:
    """The role of a layer's Linear module named ``suffix`` (``attention.attn.q`` -> ``query``), else None."""
    return next((role for role, names in KNOWN_NAMES.items() if suffix in names), None)


def short_name(suffix: str) -> str:
    """Plan's short name of a layer's Linear module: its role's (``q``, ``ffn-in``), else the name itself."""
    role = role_of(suffix)
    return SHORT[role] if role else suffix


def _shortest_target(suffix: str, linears: Sequence[str]) -> str:
    """The shortest dotted tail of ``suffix`` that matches no other of the layer's ``linears`` (``q``, not
    ``attention.attn.q``); the whole suffix when none is unique (BERT's ``output.dense`` also matches
    ``attention.output.dense``, as peft would)."""
    parts = suffix.split(".")
    for keep in range(1, len(parts) + 1):
        tail = ".".join(parts[-keep:])
        if sum(_matches(name, tail) for name in linears) == 1:
            return tail
    return suffix


def role_targets(model: torch.nn.Module, roles: Sequence[str]) -> Optional[list[str]]:
    """``target_modules`` adapting ``roles`` in ``model``, in the model's own names; None if it lacks a role."""
    linears = layer_linears(model)
    by_role = {role_of(name): name for name in linears if role_of(name)}
    if any(role not in by_role for role in roles):
        return None
    return [_shortest_target(by_role[role], linears) for role in roles]


def _role_named(target: str) -> Optional[str]:
    """The one role ``target`` can mean (``query``, ``q``, ``q_lin``, ``attention.self.query``), else None."""
    roles = {role for role, names in KNOWN_NAMES.items()
             if target in (role, SHORT[role]) or any(_matches(name, target) for name in names)}
    return roles.pop() if len(roles) == 1 else None


def describe_layer(model: torch.nn.Module) -> str:
    """The layer's Linear modules with their roles: ``attention.attn.q (query), ..., output.dense (ffn-out)``."""
    return ", ".join(f"{name} ({role_of(name)})" if role_of(name) else name for name in layer_linears(model))


def resolve_targets(model: torch.nn.Module, targets: Sequence[str], key: str, model_name: str) -> list[str]:
    """``targets`` as ``model`` names them: each target that matches none of its Linear modules is mapped to
    the model's name for the role it names (MPNet: ``query`` -> ``q``). Targets that match stay as given.

    Args:
        key: what the user set, for the error (``model.target_modules``, ``--targets``).
        model_name: the model as the user gave it, for the error.
    Raises:
        ConfigError: a target matches no Linear module and names no role the model has; the message lists
            the layer's Linear modules with their roles.
    """
    names = _linear_names(model)
    resolved, unknown = [], []
    for target in targets:
        if any(_matches(name, target) for name in names):
            resolved.append(target)
            continue
        role = _role_named(target)
        mapped = role_targets(model, [role]) if role else None
        if mapped is None:
            unknown.append(target)
        else:
            resolved += mapped
    if unknown:
        in_layer = layer_linears(model)
        example = _shortest_target(in_layer[0], in_layer) if in_layer else "query"
        raise ConfigError(f"{key}: {model_name} has no Linear module named {', '.join(repr(t) for t in unknown)}; "
                          f"its encoder layers' Linear modules are {describe_layer(model)} (a unique suffix such as "
                          f"{example} is enough, or a role: {', '.join(ROLES)})")
    return list(dict.fromkeys(resolved))


def mapping_note(given: Sequence[str], used: Sequence[str], model: torch.nn.Module) -> Optional[str]:
    """One line saying how ``given`` targets were mapped to the model's names, or None when they were not."""
    if list(given) == list(used):
        return None
    return (f"model.target_modules=[{', '.join(given)}] adapts [{', '.join(used)}]: {type(model).__name__} names its "
            f"layers' Linear modules {describe_layer(model)}")
