"""Sweep grids as data: a table's blocks, their expansion into validated TrainConfigs, the
`--smoke-test` shrink and the `--only` row filter. No Ray here, so grids are checked in a second.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qimera_core.config import (
    ADADFQ_FIELDS,
    FIELD_NAMES,
    FIELDS,
    GENERATOR_FIELDS,
    PRESETS,
    PTQ_FIELDS,
    PTQ_METHODS,
    RUN_ONLY_FIELDS,
    ZAQ_FIELDS,
    TrainConfig,
    build,
)
from qimera_core.tablespec import Block  # noqa: F401 (sweeps.grid.Block, as before)

log = logging.getLogger(__name__)

SMOKE_PRESET = "digits-smoke"
OFFLINE_PRESET = "digits-offline"
# What a trial's method is. --smoke-test keeps these from the table (and every swept axis) and
# replaces the rest (teacher, data, bits, schedule) with the offline SMOKE_PRESET.
METHOD_FIELDS = frozenset({
    "method", "mix_prob", "mix_classes", "mix_mode", "dm_layers", "dm_width", "dm_activation",
    "noise_sigma", "emb_init", "freeze_embeddings", "latent_input", "cbn_mix", *PTQ_FIELDS,
    *ADADFQ_FIELDS, *ZAQ_FIELDS,
})
# Fields build(method=...) sets from the method and the preset (AdaDFQ's per-model constants,
# ZAQ's optimisers): a smoke or offline block takes them from build, not from the table's preset.
METHOD_CONSTANTS = frozenset({"latent_input", "bns_weight", "lr_generator", "adam_beta1",
                              "kd_temperature", *ADADFQ_FIELDS})
# Fields holding local paths: made absolute before launch, since trials run in another cwd.
_PATH_FIELDS = ("cache_dir", "teacher_weights")
_PATH_PREFIXES = ("npz:", "imagenet:")          # eval_data forms that carry a path


class GridError(ValueError):
    """A sweep that cannot run as written; the message names the key, the value and the fix."""


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(FIELD_NAMES), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_axes(grid: Mapping[str, Sequence[Any]]) -> None:
    for key, values in grid.items():
        if key == "seed":
            raise GridError("grid key 'seed': seeds are their own axis; use --seeds N instead")
        if key not in FIELD_NAMES:
            raise GridError(f"grid key {key!r} is not a TrainConfig field{_suggest(key)} "
                            f"(allowed: {', '.join(sorted(FIELD_NAMES))})")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise GridError(f"grid key {key!r} must map to a non-empty list of values, "
                            f"got {values!r}")


def _build(d: Mapping[str, Any], what: str) -> TrainConfig:
    try:
        return TrainConfig.from_dict(d)
    except ValueError as err:
        raise GridError(f"{what}: {err}") from None


def expand(base: TrainConfig | Mapping[str, Any], grid: Mapping[str, Sequence[Any]],
           seeds: int | Sequence[int] = 1) -> list[TrainConfig]:
    """Every trial of `base` x `grid` x seeds, each a validated TrainConfig.

    Seeds are the outermost loop, so a sweep that is cut short still covers every cell once.
    A bad value raises GridError naming the grid key, the value and what is allowed.
    """
    base_d = base.to_dict() if isinstance(base, TrainConfig) else dict(base)
    _check_axes(grid)
    _build(base_d, "base config")
    for key, values in grid.items():               # name the culprit before trying products
        for value in values:
            _build({**base_d, key: value}, f"grid key {key!r} value {value!r}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise GridError("--seeds must be >= 1")
    keys = list(grid)
    trials = []
    for seed in seed_list:
        for values in itertools.product(*(grid[k] for k in keys)):
            combo = dict(zip(keys, values, strict=True))
            trials.append(_build({**base_d, **combo, "seed": seed},
                                 f"grid values {combo} do not go together"))
    return trials


def check_unique(trials: Iterable[tuple[str, TrainConfig]]) -> None:
    """Fail on two (row, config) pairs with one config hash: the same work twice."""
    seen: dict[str, str] = {}
    for row, cfg in trials:
        if cfg.config_hash in seen:
            raise GridError(f"rows {seen[cfg.config_hash]} and {row} both hold the trial with "
                            f"config hash {cfg.config_hash} (seed {cfg.seed}); remove the "
                            "repeated value or block")
        seen[cfg.config_hash] = row


def select(blocks: Sequence[Block], only: Sequence[str]) -> list[Block]:
    """The blocks whose row name contains any of `only` (all blocks when `only` is empty)."""
    if not only:
        return list(blocks)
    picked = [b for b in blocks if any(o in b.row for o in only)]
    if not picked:
        raise GridError(f"--only {','.join(only)} matches no row; rows are: "
                        f"{', '.join(b.row for b in blocks)}")
    return picked


def smoke(block: Block, preset: str = SMOKE_PRESET) -> Block:
    """The same block on an offline digits setting: method fields and swept axes stay,
    teacher, data, bits and schedule come from `preset` (others back to defaults)."""
    keep = METHOD_FIELDS | set(block.grid) | set(RUN_ONLY_FIELDS)
    base = block.base_dict()
    method = base.get("method")
    if method not in ("qimera", "gdfq"):      # the preset as build(method=...) makes it: the
        fixed = GENERATOR_FIELDS if method in PTQ_METHODS else ()   # method's own constants
        kept = {k: v for k, v in base.items()
                if k in keep and k not in fixed and k not in METHOD_CONSTANTS}
        return dataclasses.replace(block, base=build(preset, **kept).to_dict())
    setting = {k: f.default for k, f in FIELDS.items() if k not in keep}
    setting.update({k: v for k, v in PRESETS[preset].items() if k not in keep})
    return dataclasses.replace(block, base={**base, **setting})


def first_setting(blocks: Sequence[Block]) -> list[Block]:
    """The blocks of the table's first setting: rows named `<setting>/<variant>` share one
    (the main table's GDFQ and Qimera rows of one preset); other rows stand alone."""
    head = blocks[0].row.split("/")[0]
    return [b for b in blocks if b.row.split("/")[0] == head]


def override(block: Block, overrides: Mapping[str, Any]) -> Block:
    """Apply CLI overrides to a block. Overriding a swept key narrows that axis to one value."""
    grid = {k: ([overrides[k]] if k in overrides else list(v)) for k, v in block.grid.items()}
    base = {**block.base_dict(), **{k: v for k, v in overrides.items() if k not in grid}}
    return dataclasses.replace(block, base=base, grid=grid)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Relative paths in a config, resolved against this process's cwd."""
    changes: dict[str, Any] = {}
    for name in _PATH_FIELDS:
        value = getattr(cfg, name)
        if value and value != "random" and not Path(value).expanduser().is_absolute():
            changes[name] = str(Path(value).expanduser().resolve())
    for prefix in _PATH_PREFIXES:
        path = cfg.eval_data[len(prefix):]
        if cfg.eval_data.startswith(prefix) and path and not Path(path).expanduser().is_absolute():
            changes["eval_data"] = prefix + str(Path(path).expanduser().resolve())
    return dataclasses.replace(cfg, **changes) if changes else cfg


def chosen_blocks(blocks: Sequence[Block], *, only: Sequence[str] = (),
                  smoke_test: bool = False, offline: bool = False,
                  overrides: Mapping[str, Any] | None = None) -> list[Block]:
    """The blocks a sweep runs, with its setting and overrides applied.

    `smoke_test`: the first block on the tiny digits-smoke schedule (a pipeline check).
    `offline`: the first setting's blocks on the digits-offline schedule (a small real study).
    """
    chosen = select(blocks, only)
    if smoke_test:
        chosen = [smoke(chosen[0])]
    elif offline:
        chosen = [smoke(b, OFFLINE_PRESET) for b in first_setting(chosen)]
    return [override(b, overrides or {}) for b in chosen]


def block_trials(block: Block, seeds: Sequence[int]) -> list[TrainConfig]:
    """One block's trials at `seeds`, validated, paths made absolute."""
    try:
        return [absolute_paths(c) for c in expand(block.base, block.grid, list(seeds))]
    except GridError as err:
        raise GridError(f"row {block.row}: {err}") from None


def plan(blocks: Sequence[Block], *, seeds: int, only: Sequence[str] = (),
         smoke_test: bool = False, offline: bool = False,
         overrides: Mapping[str, Any] | None = None) -> list[TrainConfig]:
    """All trials of a table as validated, unique TrainConfigs, in launch order (seed-major);
    see chosen_blocks for `smoke_test` and `offline`."""
    chosen = chosen_blocks(blocks, only=only, smoke_test=smoke_test, offline=offline,
                           overrides=overrides)
    if seeds < 1:
        raise GridError(f"--seeds must be >= 1, got {seeds}")
    trials: list[tuple[str, TrainConfig]] = []
    for seed in range(seeds):
        for block in chosen:
            trials += [(block.row, c) for c in block_trials(block, [seed])]
    check_unique(trials)
    return [cfg for _, cfg in trials]


def swept_axes(blocks: Sequence[Block]) -> list[str]:
    """The keys any block sweeps, in first-seen order (for progress tables and trial names)."""
    return list(dict.fromkeys(k for b in blocks for k in b.grid))
