"""Plan stage: enumerate LoRA configurations that fit a trainable-parameter budget, with exact counts.

Counts come from the same code that enforces the budget at train time (budget.py): the model is
built on the meta device (no weights read), the head's and any fresh module's parameters are
counted from the peft-wrapped model, and LoRA adds ``r * (in + out)`` per adapted Linear. Fresh
modules (weights the checkpoint lacks) are found from a local folder's safetensors headers, or by
loading the checkpoint with ``pretrained``; for a hub id without ``pretrained`` they are not counted
and the plan says so. tests/test_plan.py builds picks for real and checks that the built model counts
what the plan printed and that the printed YAML loads back as the picked configuration.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import OmegaConf

from textlora.model.budget import count_model, placements
from textlora.run.files import atomic_write_text
from textlora.config import ModelConfig, RunConfig, config_to_yaml
from textlora.errors import BudgetError, ConfigError
from textlora.model.heads import HEADS
from textlora.model.targets import resolve_targets, role_targets

RANKS = (1, 2, 4, 8, 16, 32, 64)
# Target lists by role (targets.py), put in each model's own module names before the search: BERT's query is
# ``query``, MPNet's ``q``. In peft's suffix matching BERT's ffn-out name "output.dense" also matches
# attention.output.dense, so the matched module types are computed from the model and shown, never assumed.
TARGET_ROLES = (
    ("query",), ("value",), ("query", "value"), ("query", "key", "value"),
    ("query", "value", "attention-output"), ("query", "key", "value", "attention-output"),
    ("ffn-in", "ffn-out"), ("query", "value", "ffn-in", "ffn-out"),
    ("query", "key", "value", "attention-output", "ffn-in", "ffn-out"),
)


@dataclass(frozen=True)
class Candidate:
    """One configuration and its exact trainable-parameter count."""

    head: str
    r: int
    target_modules: tuple[str, ...]
    matched: str
    """The module types the targets adapt in each layer, e.g. ``q,v`` or ``q,k,v,o,ffn-in,ffn-out``."""
    layers: Optional[str]
    lora: int
    head_params: int
    """Non-LoRA trainable parameters: the head and fresh modules (see the module docstring for when those are known)."""

    @property
    def total(self) -> int:
        return self.lora + self.head_params

    def model_config(self, base: ModelConfig) -> ModelConfig:
        # alpha = 2r keeps the update's scale alpha/r = 2 (the default 16/8) whatever rank is planned.
        return replace(base, lora_r=self.r, lora_alpha=float(2 * self.r), target_modules=list(self.target_modules),
                       layers=self.layers, head=self.head)


def layer_ranges(num_layers: int) -> list[Optional[str]]:
    """All layers (None), then the top 2/3, 1/2, 1/3, 1/4 and the last layer, as ``"A-B"`` ranges."""
    ranges: list[Optional[str]] = [None]
    last = num_layers - 1
    for keep in sorted({round(num_layers * 2 / 3), num_layers // 2, num_layers // 3, num_layers // 4, 1}, reverse=True):
        if 1 <= keep < num_layers:
            ranges.append(f"{last - keep + 1}-{last}" if keep > 1 else str(last))
    return list(dict.fromkeys(ranges))


def enumerate_candidates(model_cfg: ModelConfig, num_labels: int, ranks: Sequence[int] = RANKS,
                         heads: Sequence[str] = HEADS, target_sets: Optional[Sequence[tuple[str, ...]]] = None,
                         layers: Optional[Sequence[Optional[str]]] = None, pretrained: bool = False) -> list[Candidate]:
    """Every (head, rank, targets, layers) combination with its exact count, fitting or not.

    ``target_sets`` defaults to :data:`TARGET_ROLES` in the model's own module names (roles it lacks left
    out). Heads the architecture cannot take (``linear`` on an unsupported model) are left out.
    """
    return _search(model_cfg, num_labels, ranks, heads, target_sets, layers, pretrained)[0]


def _search(model_cfg: ModelConfig, num_labels: int, ranks: Sequence[int], heads: Sequence[str],
            target_sets: Optional[Sequence[tuple[str, ...]]], layers: Optional[Sequence[Optional[str]]],
            pretrained: bool) -> tuple[list[Candidate], dict[str, Optional[str]]]:
    """:func:`enumerate_candidates`, and each head's breakdown note (fresh modules not counted, say)."""
    candidates, notes = [], {}
    for head in heads:
        cfg = replace(model_cfg, head=head)
        try:
            breakdown, built = count_model(cfg, num_labels=num_labels, pretrained=pretrained)
        except ConfigError:
            if head == "standard":
                raise
            continue  # e.g. model.head=linear on an architecture heads.py does not handle
        notes[head] = breakdown.note
        non_lora = sum(n for g, n in breakdown.groups.items() if not g.startswith("lora"))
        base = built.model.get_base_model()
        num_layers = getattr(base.config, "num_hidden_layers", None)
        ranges = list(layers) if layers is not None else layer_ranges(num_layers)
        sets = target_sets if target_sets is not None else _role_sets(base)
        seen = set()
        for place in placements(base, cfg, sets, ranges):
            if not place.per_rank or (place.matched, place.layers) in seen:
                continue
            seen.add((place.matched, place.layers))
            candidates += [Candidate(head, r, place.target_modules, place.matched, place.layers, r * place.per_rank,
                                     non_lora) for r in ranks]
    return candidates, notes


def _role_sets(base: torch.nn.Module) -> list[tuple[str, ...]]:
    """:data:`TARGET_ROLES` as ``base`` names its modules (MPNet: ``("q", "v")``), sets of roles it lacks left out."""
    sets = (role_targets(base, roles) for roles in TARGET_ROLES)
    return list(dict.fromkeys(tuple(targets) for targets in sets if targets))


def _coverage(c: Candidate, num_layers: int) -> int:
    span = num_layers if c.layers is None else len(ModelConfig(layers=c.layers).layer_indices())
    return span * len(c.matched.split(","))


def shortlist(candidates: list[Candidate], budget: int, num_layers: int, top: int = 10) -> list[Candidate]:
    """The best configurations that fit: per placement (head, targets, layers) the largest rank that fits.

    Ranked by coverage (adapted layers x module types) first, then LoRA parameters bought: for a fixed
    budget, adapting more weight types at a lower rank beats one type at a high rank (Hu et al. 2021,
    LoRA, section 7.1), and a lighter head leaves more of the budget to LoRA. Where both heads count the same
    (BERT-style models: the linear head replaces a frozen pooler and keeps the stock classifier), the
    standard head's row is kept and the linear one, the same numbers again, left out.
    """
    best: dict = {}
    for c in candidates:
        key = (c.head, c.matched, c.layers)
        if c.total <= budget and (key not in best or c.r > best[key].r):
            best[key] = c
    ranked = sorted(best.values(), key=lambda c: (-_coverage(c, num_layers), -c.lora, HEADS.index(c.head)))
    distinct = {}
    for c in ranked:
        distinct.setdefault((c.matched, c.layers, c.r, c.lora, c.head_params), c)
    return list(distinct.values())[:top]


def plan(budget: int, model: Optional[str] = None, num_labels: int = 4, base: Optional[RunConfig] = None,
         ranks: Sequence[int] = RANKS, heads: Sequence[str] = HEADS, targets: Optional[list[str]] = None,
         layers: Optional[str] = None, top: int = 10, pick: int = 1, pretrained: bool = False,
         output: Optional[Path] = None, as_json: bool = False) -> list[Candidate]:
    """Print the shortlist of configurations under ``budget`` and the YAML of pick number ``pick``.

    Args:
        model: hub id or local folder (default: the base config's model, else roberta-base).
        base: a run config to complete; the printed YAML is then a whole config, ready for ``train``.
        targets, layers: restrict the search to these target modules / this layer range.
        output: also write the YAML there (atomically).

    Returns:
        the shortlist, best first.

    Raises:
        BudgetError: nothing fits (the head alone may exceed the budget).
    """
    if budget <= 0:
        raise ConfigError(f"--budget {budget}: give a positive number of trainable parameters")
    whole = base is not None
    base = base or RunConfig()
    model_cfg = replace(base.model, max_trainable_params=budget, **({"name_or_path": model} if model else {}))
    targets = _check_search(model_cfg, num_labels, targets, layers)
    sets = [tuple(targets)] if targets else None
    candidates, notes = _search(model_cfg, num_labels, ranks, heads, sets, [layers] if layers else None, pretrained)
    from textlora.model.build import load_model_config

    num_layers = load_model_config(model_cfg.name_or_path, num_labels=num_labels, shapes_only=True).num_hidden_layers
    ranked = shortlist(candidates, budget, num_layers, top)
    if not ranked:
        raise BudgetError(_nothing_fits(candidates, budget, model_cfg, num_labels, ranks, heads, sets,
                                        [layers] if layers else None, pretrained))
    if not 1 <= pick <= len(ranked):
        raise ConfigError(f"--pick {pick}: the shortlist has {len(ranked)} entries; pick 1..{len(ranked)}")
    chosen = ranked[pick - 1]
    config = replace(base, model=chosen.model_config(model_cfg))
    note = notes[chosen.head]
    text = _yaml(config, chosen, budget, whole)
    if as_json:
        import json

        print(json.dumps([{**asdict(c), "total": c.total} for c in ranked], indent=2))
        if note:
            print(f"note: {note}", file=sys.stderr)  # stdout stays one JSON document
    else:
        print(table(ranked, budget))
        if note:
            print(f"note: {note}")
        print(f"\n# pick {pick}: textlora train --config <this file>")
        print(text)
    if output is not None:
        atomic_write_text(Path(output), text)
        print(f"wrote {output}")
    return ranked


def _nothing_fits(candidates: list[Candidate], budget: int, model_cfg: ModelConfig, num_labels: int,
                  ranks: Sequence[int], heads: Sequence[str], sets, layers, pretrained: bool) -> str:
    """Why nothing fits, and only the changes that would make something fit: a higher budget, and where the
    search left them out and they fit, the linear head (``--head standard`` given) or rank 1 (``--ranks``)."""
    smallest = min(candidates, key=lambda c: c.total) if candidates else None
    fixes = [f"raise --budget to at least {smallest.total:,}" if smallest else "raise --budget"]
    if "linear" not in heads:
        light = enumerate_candidates(model_cfg, num_labels, ranks, ("linear",), sets, layers, pretrained)
        lightest = min((c.total for c in light), default=None)
        if lightest is not None and lightest <= budget:
            fixes.append(f"drop --head standard (the linear head's smallest configuration has {lightest:,})")
    if candidates and min(ranks) > 1:
        rank_one = min(c.head_params + c.lora // c.r for c in candidates)  # LoRA is linear in r
        if rank_one <= budget:
            fixes.append(f"add rank 1 to --ranks (its smallest configuration has {rank_one:,})")
    hint = (f" (the smallest, {smallest.head} head with r={smallest.r} on {smallest.matched}, has "
            f"{smallest.total:,})") if smallest else ""
    return f"no configuration of {model_cfg.name_or_path} fits a budget of {budget:,}{hint}; {' or '.join(fixes)}"


def _check_search(model_cfg: ModelConfig, num_labels: int, targets: Optional[list[str]],
                  layers: Optional[str]) -> Optional[list[str]]:
    """Refuse ``--targets`` the model has no Linear for and ``--layers`` beyond its last layer, naming them.

    Without this, nothing would match and the search would end in a misleading "nothing fits the budget".

    Returns:
        ``targets`` in the model's own names (a role such as ``query`` mapped, as for ``model.target_modules``).
    """
    from textlora.config import parse_layer_range
    from textlora.model.build import build_base_model, load_model_config

    name = model_cfg.name_or_path
    if layers is not None:
        wanted = parse_layer_range(layers, "model.layers")
        num_layers = load_model_config(name, num_labels=num_labels, shapes_only=True).num_hidden_layers
        if wanted[-1] >= num_layers:
            raise ConfigError(f"--layers {layers}: {name} has {num_layers} layers, numbered 0-{num_layers - 1}; "
                              f"give a range within them, e.g. {num_layers // 2}-{num_layers - 1}")
    if not targets:
        return targets
    base, _ = build_base_model(replace(model_cfg, head="standard"), None, pretrained=False, num_labels=num_labels)
    resolved = resolve_targets(base, targets, f"--targets {','.join(targets)}", name)
    if resolved != list(targets):
        print(f"note: --targets {','.join(targets)} is {','.join(resolved)} in {name}'s module names",
              file=sys.stderr)
    return resolved


PLAN_HEADER = "# textlora plan:"
"""The first words of the YAML plan writes: how ``--output`` knows a file is an earlier plan it may replace."""


def _yaml(config: RunConfig, chosen: Candidate, budget: int, whole: bool) -> str:
    header = (f"{PLAN_HEADER} {chosen.total:,} trainable parameters of a {budget:,} budget "
              f"({chosen.head} head, r={chosen.r} on {chosen.matched}, layers {chosen.layers or 'all'})\n")
    if whole:
        text = config_to_yaml(config)
    else:
        text = OmegaConf.to_yaml({"model": OmegaConf.to_container(OmegaConf.structured(config.model))})
    return header + text


def table(ranked: list[Candidate], budget: int) -> str:
    """The shortlist as an aligned text table."""
    rows = [("#", "head", "r", "LoRA on", "layers", "LoRA", "head+fresh", "total", "of budget")]
    for i, c in enumerate(ranked, start=1):
        rows.append((str(i), c.head, str(c.r), c.matched, c.layers or "all", f"{c.lora:,}", f"{c.head_params:,}",
                     f"{c.total:,}", f"{c.total / budget:.1%}"))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    left = {1, 3, 4}
    return "\n".join("  ".join(cell.ljust(w) if k in left else cell.rjust(w) for k, (cell, w) in
                               enumerate(zip(row, widths))) for row in rows)
