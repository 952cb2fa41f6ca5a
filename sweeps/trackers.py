"""`--wandb PROJECT` and `--mlflow URI`: Ray Tune's own `WandbLoggerCallback` and
`MLflowLoggerCallback` (ray.air.integrations), attached to the sweep's Tune run. No logging of
our own: what they send is Tune's trial config and each reported result, as Tune flattens them.

One tracker run is one Tune trial, so a pack of N configs is one run. Both its config and its
results key the pack's members `m0` ... `m<N-1>` (the `_m<i>` of their `trial_id` in
--results): the config as `pack/configs/m<i>/<TrainConfig field>` (W&B shows it with dots), the
metrics as `members/m<i>/<metric>` per epoch, beside the pack's `epoch`, `top1` (mean over the
members), `top1_min`, `top1_max` and `live`. Search mode's sampled config is a pack of one,
`pack/configs/m0/<field>`.

Both flags are checked when the command line is parsed, before any work: the package is
installed (else the `trackers` extra is named), the W&B project name is one W&B takes and it
can log in (or runs offline), and MLflow can open the URI (MLflow 3 opens file stores only with
MLFLOW_ALLOW_FILE_STORE=true). A resumed experiment
(`--resume`) keeps the trackers it was started with: Tune restores its callbacks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

INSTALL = 'pip install -e ".[trackers]"'
# W&B refuses project names with these characters, or longer than 128.
_WANDB_BAD = set('/\\#?%:')
# The up-front MLflow probe fails fast instead of MLflow's minutes of retries.
_PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _need(module: str, flag: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise argparse.ArgumentTypeError(
            f"{module} is not installed; {flag} needs the trackers extra: {INSTALL}")


def wandb_project(text: str) -> str:
    """argparse type of --wandb: a W&B project name, with wandb installed and a way to log in."""
    _need("wandb", "--wandb")
    if not text or len(text) > 128 or _WANDB_BAD & set(text):
        raise argparse.ArgumentTypeError(
            f"W&B project names are 1-128 characters without / \\ # ? % :, got {text!r}")
    mode = os.environ.get("WANDB_MODE", "")
    if (mode not in ("offline", "disabled", "dryrun") and not os.environ.get("WANDB_API_KEY")
            and not _wandb_key()):
        raise argparse.ArgumentTypeError(
            "W&B has no API key here: run `wandb login`, set WANDB_API_KEY, or set "
            "WANDB_MODE=offline (and `wandb sync` the runs later)")
    return text


def _wandb_key() -> bool:
    """Whether W&B finds a stored API key (`wandb login`), as Ray's callback requires before
    it starts; asks no server and prints nothing."""
    import wandb
    with (contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO())):
        try:
            return bool(wandb.login(prompt=False, verify=False))
        except TypeError:                               # a wandb whose login has no prompt=
            with contextlib.suppress(Exception):
                wandb.ensure_configured()
                return bool(wandb.api.api_key)
        except Exception:
            pass
    return False


def mlflow_uri(text: str) -> str:
    """argparse type of --mlflow: a tracking URI MLflow can open (a local path becomes a
    `file://` URI). A server is asked once, without retries, that it answers."""
    _need("mlflow", "--mlflow")
    uri = text
    parsed = urlparse(text)
    if not parsed.scheme or len(parsed.scheme) == 1:           # a path (or C:\...)
        uri = Path(text).expanduser().resolve().as_uri()
    elif parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise argparse.ArgumentTypeError(
                f"{text!r} names host {parsed.netloc!r}; a file store URI is file:///ABSOLUTE/PATH")
    try:
        _probe(uri)
    except argparse.ArgumentTypeError:
        raise
    except Exception as e:                              # MlflowException, OSError, ...
        if "MLFLOW_ALLOW_FILE_STORE" in str(e):         # MLflow 3: file stores opt-in only
            raise argparse.ArgumentTypeError(
                f"this MLflow refuses file stores ({text}) unless MLFLOW_ALLOW_FILE_STORE=true "
                "is set: set it, or use sqlite:///PATH/mlflow.db") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "unsupported URI" in first:                  # no store for the scheme
            first = (f"it has no tracking store for {urlparse(uri).scheme}:// URIs (give "
                     "http(s)://HOST:PORT, sqlite:///PATH/mlflow.db, databricks, or a folder)")
        raise argparse.ArgumentTypeError(f"MLflow cannot use {text!r}: {first[:300]}") from None
    return uri


def _probe(uri: str) -> None:
    """What MLflowLoggerCallback does first (a client for the URI, an experiment lookup), once."""
    if uri.startswith("file:"):
        root = Path(urlparse(uri).path)
        if root.exists() and not root.is_dir():
            raise argparse.ArgumentTypeError(f"{root} is a file; a file store is a folder")
    from mlflow import MlflowClient
    saved = {k: os.environ.get(k) for k in _PROBE_ENV}
    os.environ.update(_PROBE_ENV)
    quiet = logging.getLogger("mlflow")             # the error says it; no warnings before it
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    finally:
        quiet.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def callbacks(args: argparse.Namespace, table: str, experiment: str) -> list[Any]:
    """The tracker callbacks the flags ask for (none without them), for Tune experiment
    `experiment` of `table`."""
    out: list[Any] = []
    if getattr(args, "wandb", None):
        from ray.air.integrations.wandb import WandbLoggerCallback
        # The run's group is Tune's experiment name (Ray's default). wandb.init runs in a Ray
        # actor on this node, which sees the environment Ray was started with, not this
        # process's: pass on the W&B settings this process has.
        init = {k: os.environ[e] for k, e in (("mode", "WANDB_MODE"), ("dir", "WANDB_DIR"),
                                              ("entity", "WANDB_ENTITY")) if os.environ.get(e)}
        out.append(WandbLoggerCallback(project=args.wandb, tags=[table], **init))
    if getattr(args, "mlflow", None):
        from ray.air.integrations.mlflow import MLflowLoggerCallback
        # One MLflow experiment per Tune experiment (as W&B's group), e.g. table9-smoke-<time>.
        out.append(MLflowLoggerCallback(tracking_uri=args.mlflow,
                                        experiment_name=experiment,
                                        tags={"table": table}))
    return out
