"""What runs inside a Ray worker: one Tune trial trains one pack of TrainConfigs (or search
mode's single sampled config) through the core train_pack(), reporting each epoch and its
checkpoint to Tune, and resuming from the last one after a crash."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune

from qimera_core.config import TrainConfig
from sweeps import rows

log = logging.getLogger(__name__)


class TuneReporter:
    """The Reporter that train() calls inside a trial: each epoch's metrics and checkpoint go to
    Tune, which copies the checkpoint to storage. Optionally kills its own process once after
    epoch `fail_once_at_epoch`, to exercise recovery from checkpoints (testing only)."""

    def __init__(self, device_name: str, fail_once_at_epoch: int = 0,
                 marker: Path | None = None) -> None:
        self.device_name = device_name
        self.fail_once_at_epoch = fail_once_at_epoch
        self.marker = marker

    def __call__(self, metrics: Mapping[str, Any], checkpoint_dir: Path | None = None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        # Members keyed m0, m1, ... (not a list): Tune's loggers (TensorBoard, CSV, W&B, MLflow)
        # flatten nested dicts into `members/m0/top1`, and drop lists.
        members = {member_key(i): m for i, m in enumerate(metrics.get("members", ()))}
        tune.report({**metrics, "members": members, "device_name": self.device_name},
                    checkpoint=checkpoint)
        if self.fail_once_at_epoch and metrics.get("epoch") == self.fail_once_at_epoch:
            if self.marker is not None and not self.marker.exists():
                self.marker.touch()
                log.warning("--fail-once-at-epoch %d: killing this trial's process",
                            self.fail_once_at_epoch)
                os.kill(os.getpid(), signal.SIGKILL)   # a crash, not an exception Tune could catch


def _claim_device(cfg: TrainConfig, gpus: float) -> str:
    import torch
    if cfg.device.startswith("cuda"):
        # Ray shares a GPU between fractional trials but does not fence their memory.
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpus))
        return torch.cuda.get_device_name()
    return "cpu"


def member_key(index: int) -> str:
    """A pack member's key in a trial's config and results: the `_m<index>` of its trial_id."""
    return f"m{index}"


def _in_order(items: Any) -> list[Any]:
    """A pack's members, from {"m0": ..., "m1": ...} or (an older experiment's) list."""
    if isinstance(items, Mapping):
        return [items[member_key(i)] for i in range(len(items))]
    return list(items or ())


def pack_configs(params: Mapping[str, Any]) -> list[TrainConfig]:
    """The runs of one Tune trial. Every trial has one param shape, a pack:
    {"pack": {"size": N, "label": ..., "gpus": G, "configs": {"m0": {...}, ...}}} (search
    mode's sampled config is a pack of one). Experiments started by an older version hold
    {"config": {...}} for search mode; they are still read, to resume them."""
    if "pack" in params:
        return [TrainConfig.from_dict(d) for d in _in_order(params["pack"]["configs"])]
    return [TrainConfig.from_dict(params["config"])]


def pack_params(cfgs: Sequence[Mapping[str, Any]], gpus: float, label: str) -> dict[str, Any]:
    """A trial's params: its pack (configs as dicts, or search domains), what the pack's label
    shows in the progress table, and the GPUs it asks for."""
    return {"size": len(cfgs), "label": label, "gpus": gpus,
            "configs": {member_key(i): dict(c) for i, c in enumerate(cfgs)}}


def pack_members(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each member's metrics in a trial's result, in the order of `pack_configs`."""
    return _in_order(result.get("members"))


def gpus_for(share: float, size: int) -> float:
    """GPUs a pack asks for: its runs' per-run share times their number, at most one GPU (a
    pack of small runs fills one GPU instead of sharing it between processes)."""
    return share if size == 1 else min(1.0, share * size)


def pack_gpus(params: Mapping[str, Any]) -> float:
    """GPUs a Tune trial asks for (its pack's `gpus`; an older experiment's from its "run")."""
    if "pack" in params and "gpus" in params["pack"]:
        return float(params["pack"]["gpus"])
    cfgs = pack_configs(params)
    return gpus_for(params["run"]["gpus"][cfgs[0].teacher], len(cfgs))


def run_constants(cpus: float, results_dir: Path | str = "", fail_once_at_epoch: int = 0
                  ) -> dict[str, Any]:
    """What every trial of an experiment shares, given to the trainable through
    tune.with_parameters (not the param space): CPUs per trial, --results, the fault switch."""
    return {"cpus": cpus, "results": str(results_dir), "fail_once_at_epoch": fail_once_at_epoch}


def run_trial(params: dict[str, Any], run: Mapping[str, Any] | None = None,
              finished: frozenset[str] = frozenset()) -> None:
    """Tune's function trainable: one pack of TrainConfigs through the core train_pack(),
    resumable. `run`: the experiment's run_constants (an older experiment's are in params).

    `finished`: config hashes with a finished row in --results. A restored trial whose runs are
    all among them (its driver was killed after it ended, before Tune's experiment state said
    so) ends at once.
    """
    # Late: the driver imports this module for trainable and pack_configs and never trains, so
    # the trainer loads in trial processes only. That does not keep torch out of the driver:
    # building any TrainConfig imports it (the teacher-name check, qimera_core.teachers).
    from qimera_core.train import train_pack
    cfgs = pack_configs(params)
    run = params.get("run") or run or {}
    # The whole pack trains unless every run of it is done (here, or by another driver since
    # planning); a run done elsewhere trains again, which costs time, not rows.
    if all(c.config_hash in finished or _finished_elsewhere(run.get("results", ""), c)
           for c in cfgs):
        return
    reporter = TuneReporter(_claim_device(cfgs[0], pack_gpus(params)),
                            run.get("fail_once_at_epoch", 0),
                            Path(tune.get_context().get_trial_dir()) / ".failed-once")
    resume = tune.get_checkpoint()
    # train_pack()'s own checkpoint folder is scratch: Tune copies each reported one to storage.
    with (tempfile.TemporaryDirectory(prefix="qimera-trial-") as out_dir,
          resume.as_directory() if resume else contextlib.nullcontext() as resume_dir):
        train_pack(cfgs, Path(out_dir), report=reporter,
                   resume_from=Path(resume_dir) if resume_dir else None)


def _finished_elsewhere(results_dir: str, cfg: TrainConfig) -> bool:
    """Whether another driver (a second sweep into the same --results) finished this config
    after this one planned it. Checked where this node sees --results (one machine, or a
    shared filesystem); elsewhere two drivers may both run it, which costs time, not rows."""
    if not results_dir or not Path(results_dir).is_dir():
        return False
    return cfg.config_hash in rows.recorded(Path(results_dir))[1]


def trial_resources(run: Mapping[str, Any]) -> Callable[[dict[str, Any]], Any]:
    """The resources of each trial: the experiment's CPUs per trial, its pack's GPUs."""
    def resources(params: dict[str, Any]) -> tune.PlacementGroupFactory:
        cpus = params["run"]["cpus"] if "run" in params else run["cpus"]
        return tune.PlacementGroupFactory([{"CPU": cpus, "GPU": pack_gpus(params)}])
    return resources


def trainable(run: Mapping[str, Any], finished: frozenset[str] = frozenset()) -> Any:
    """run_trial with its resources, the run constants and the finished hashes bound."""
    return tune.with_parameters(tune.with_resources(run_trial, trial_resources(run)),
                                run=dict(run), finished=finished)
