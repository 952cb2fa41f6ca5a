"""Put what a config needs (teacher weights, eval data) into its cache: the only code that downloads
or trains teachers. Training runs call `ensure_ready()`, which only checks.

    python -m qimera_core.prepare --preset digits-2w2a --cache DIR
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qimera_core import config, data, models
from qimera_core.config import ArgumentParser, TrainConfig

log = logging.getLogger(__name__)

# The digits teacher's recipe. Fixed (not taken from the config): the cached file is shared by
# every run and seed that names digits_resnet8. Measured: ~99 % test top-1 in ~2 s on one core.
DIGITS_RECIPE: dict[str, Any] = dict(epochs=30, batch_size=64, lr=0.1, momentum=0.9,
                                     weight_decay=5e-4, seed=0)
_CIFAR_FILES = {"cifar10": "cifar-10-batches-py/test_batch", "cifar100": "cifar-100-python/test"}


def prepare(cfg: TrainConfig) -> None:
    """Fetch or train the teacher weights and fetch the eval data that `cfg` needs, if missing.
    Safe to run concurrently: a lock file serialises preparers and files are written atomically."""
    s = models.spec(cfg.teacher)
    data.check_compatible(cfg)
    cfg.cache.mkdir(parents=True, exist_ok=True)
    with _locked(cfg.cache / "prepare.lock"):
        _prepare_weights(cfg, s)
        _prepare_data(cfg)


def ensure_ready(cfg: TrainConfig) -> None:
    """Raise ValueError, naming the prepare command, unless the weights and eval data `cfg` needs
    are present. Downloads and writes nothing."""
    models.spec(cfg.teacher)
    data.check_compatible(cfg)
    problems = [p for p in (_weights_problem(cfg), _data_problem(cfg)) if p]
    if problems:
        raise ValueError("not ready to run: " + "; ".join(problems))


def check_inputs(cfg: TrainConfig) -> None:
    """Raise ValueError if a file the user named is missing or unusable: --teacher-weights and
    `npz:PATH` are read and checked against the teacher. The CLIs call this before any run;
    nothing is downloaded or written."""
    if cfg.teacher_weights not in ("", "random"):
        path = Path(cfg.teacher_weights).expanduser()
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ValueError(f"--teacher-weights {path} {what}; pass the path of a state_dict "
                             "file")
        models.load_weights(models.spec(cfg.teacher).builder(), path)
    if cfg.eval_data.startswith("npz:"):
        data.check_npz(cfg)


# ---- checks ----------------------------------------------------------------------------------
def _weights_problem(cfg: TrainConfig) -> str | None:
    if cfg.teacher_weights == "random":
        return None
    if cfg.teacher_weights:
        path = Path(cfg.teacher_weights).expanduser()
        return None if path.is_file() else f"--teacher-weights file {path} does not exist"
    path = models.weights_path(cfg)
    if path.is_file():
        return None
    return (f"teacher weights for {cfg.teacher!r} are not at {path}: run "
            f"`{models.prepare_command(cfg)}`, or pass --teacher-weights PATH")


def _data_problem(cfg: TrainConfig) -> str | None:
    kind = cfg.eval_data.split(":", 1)[0]
    if kind in _CIFAR_FILES:
        if (cfg.cache / "data" / _CIFAR_FILES[kind]).is_file():
            return None
        return (f"{kind} test split is not under {cfg.cache / 'data'}: run "
                f"`{models.prepare_command(cfg)}`")
    if kind == "imagenet":
        root = data.imagenet_dir(cfg)
        return None if _has_subdirs(root) else _imagenet_help(root)
    if kind == "npz":
        path = Path(cfg.eval_data[4:]).expanduser()
        return None if path.is_file() else f"eval_data file {path.resolve()} does not exist"
    if kind == "digits":
        try:
            import sklearn  # noqa: F401
        except ImportError:
            return "eval_data 'digits' needs scikit-learn: pip install scikit-learn"
    return None


def _has_subdirs(root: Path) -> bool:
    return root.is_dir() and any(p.is_dir() for p in root.iterdir())


def _imagenet_help(root: Path) -> str:
    return (f"ImageNet val folder {root} is missing or has no class folders. prepare cannot "
            "download ImageNet: lay out the ILSVRC-2012 validation images as "
            "VALDIR/<wnid>/<image>.JPEG (1000 folders, e.g. VALDIR/n01440764/"
            "ILSVRC2012_val_00000293.JPEG) and pass --eval-data imagenet:VALDIR, or put them "
            "at CACHE/data/imagenet/val")


# ---- weights ---------------------------------------------------------------------------------
def _prepare_weights(cfg: TrainConfig, s: models.TeacherSpec) -> None:
    problem = _weights_problem(cfg)
    if cfg.teacher_weights == "random":
        log.info("teacher %s: random init (teacher_weights=random), nothing to fetch", s.name)
        return
    if not problem:
        where = cfg.teacher_weights or models.weights_path(cfg)
        log.info("teacher %s: weights present at %s", s.name, where)
        return
    if cfg.teacher_weights:
        raise ValueError(problem)
    path = models.weights_path(cfg)
    if s.name == "digits_resnet8":
        state = train_digits_teacher()
    elif s.source == "pytorchcv":
        state = _fetch(cfg, lambda: _pytorchcv_pretrained(s.name, cfg.cache / "pytorchcv"))
    elif s.source == "torchvision":
        state = _fetch(cfg, lambda: _torchvision_pretrained(s.name, cfg.cache / "torch"))
    else:
        hint = (" (the akamaster checkpoint, resnet20-12fca82f.th)"
                if s.name == "resnet20_cifar10_a" else "")
        raise ValueError(f"prepare has no source of weights for teacher {s.name!r}: pass "
                         f"--teacher-weights PATH{hint}, or --teacher-weights random for tests")
    save_atomic(state, path)
    log.info("teacher %s: weights saved to %s", s.name, path)


def _pytorchcv_pretrained(name: str, root: Path) -> dict[str, torch.Tensor]:
    from pytorchcv.model_provider import get_model
    return get_model(name, pretrained=True, root=str(root)).state_dict()


def _torchvision_pretrained(name: str, hub_dir: Path) -> dict[str, torch.Tensor]:
    import torchvision
    tv_name = name[len(models.TV_PREFIX):]
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(hub_dir))  # so the download lands in our cache, not ~/.cache/torch
    try:
        return torchvision.models.get_model(tv_name, weights="DEFAULT").state_dict()
    finally:
        torch.hub.set_dir(previous)


def _fetch(cfg: TrainConfig, fn: Callable[[], Any]) -> Any:
    """Run a download, turning network failures into one clear message."""
    try:
        return fn()
    except (OSError, RuntimeError, ValueError, UserWarning) as e:  # requests/urllib/hash errors
        raise RuntimeError(
            f"prepare needs internet access to fetch {cfg.teacher!r} / {cfg.eval_data!r}, and "
            f"the download failed: {type(e).__name__}: {e}. Run it where there is internet, "
            "or pass --teacher-weights PATH with a local state_dict file") from e


def save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """torch.save to a temp file in the same folder, then os.replace: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache may be shared
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)   # gone after a successful replace; else clean up


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes still keep files whole
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- the digits teacher ----------------------------------------------------------------------
def train_digits_teacher() -> dict[str, torch.Tensor]:
    """Train digits_resnet8 on the digits train split with DIGITS_RECIPE; deterministic on CPU
    (one thread, own RNG streams, no nondeterministic ops). Returns its state_dict."""
    r = DIGITS_RECIPE
    train = data.digits_train_split()
    x, y = train.normalized(), train.labels
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fixes the reduction order, so the file is identical everywhere
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r["seed"])
            model = models.create("digits_resnet8")
            _fit(model, x, y, torch.Generator().manual_seed(r["seed"]))
    finally:
        torch.set_num_threads(threads)
    model.eval()
    acc = data.evaluate(model, data.digits_test_split(), "cpu")["top1"]
    log.info("teacher digits_resnet8: trained in %.1f s, digits test top-1 %.2f %%",
             time.perf_counter() - t0, acc)
    return model.state_dict()


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> None:
    r = DIGITS_RECIPE
    bs, n = r["batch_size"], len(y)
    opt = torch.optim.SGD(model.parameters(), lr=r["lr"], momentum=r["momentum"], nesterov=True,
                          weight_decay=r["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, r["epochs"] * -(-n // bs))
    model.train()
    for _ in range(r["epochs"]):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


# ---- eval data -------------------------------------------------------------------------------
def _prepare_data(cfg: TrainConfig) -> None:
    kind = cfg.eval_data.split(":", 1)[0]
    problem = _data_problem(cfg)
    if not problem:
        log.info("eval data %s: present%s", cfg.eval_data,
                 " (ships with scikit-learn)" if kind == "digits" else "")
        return
    if kind not in _CIFAR_FILES:  # imagenet, npz, missing sklearn: nothing we can fetch
        raise ValueError(problem)
    from torchvision import datasets
    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    root = cfg.cache / "data"
    _fetch(cfg, lambda: cls(str(root), train=False, download=True))
    log.info("eval data %s: downloaded to %s", kind, root)


# ---- CLI -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m qimera_core.prepare",
        description="Download or train the teacher weights and fetch the eval data a config "
                    "needs, into its cache. Needs internet except for the digits presets.")
    p.add_argument("--preset", choices=sorted(config.PRESETS), default=None)
    p.add_argument("--cache", dest="cache_dir", default=None,
                   help="cache folder (same as --cache-dir; default $QIMERA_CACHE or "
                        "~/.cache/qimera-sweeps)")
    config.add_config_flags(p)
    args = p.parse_args(argv)
    # Show prepare's progress messages on stdout, whatever logging set-up the caller has.
    pkg_log, handler = logging.getLogger("qimera_core"), logging.StreamHandler(sys.stdout)
    level = pkg_log.level
    pkg_log.addHandler(handler)
    pkg_log.setLevel(logging.INFO)
    try:
        cfg = config.build(args.preset, **config.overrides_from_args(args))
        check_inputs(cfg)
        prepare(cfg)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 1
    finally:
        pkg_log.removeHandler(handler)
        pkg_log.setLevel(level)
    print(f"ready: teacher {cfg.teacher}, eval data {cfg.eval_data}, cache {cfg.cache}")
    return 0


if __name__ == "__main__":
    # Run the package's copy of this module (already imported by qimera_core/__init__), so its
    # loggers are "qimera_core.prepare" rather than "__main__".
    from qimera_core.prepare import main as package_main
    sys.exit(package_main())
