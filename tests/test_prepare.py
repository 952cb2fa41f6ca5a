"""prepare/ensure_ready: the digits teacher is trained offline, deterministically and well; other
sources fail with clear errors offline; checks never write; the CLI works."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from qimera_core import config, data, models, prepare


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """One prepared digits cache for the module (trains the teacher once, a few seconds)."""
    cache = tmp_path_factory.mktemp("cache")
    prepare.prepare(config.build("digits-2w2a", cache_dir=str(cache)))
    return cache


def test_ensure_ready_raises_before_prepare_and_writes_nothing(tmp_path):
    cfg = config.build("digits-2w2a", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="python -m qimera_core.prepare --teacher digits_resnet8"):
        prepare.ensure_ready(cfg)
    assert not (tmp_path / "cache").exists()


def test_ensure_ready_passes_after_prepare(digits_cache):
    prepare.ensure_ready(config.build("digits-2w2a", cache_dir=str(digits_cache)))
    prepare.ensure_ready(config.build("digits-smoke", cache_dir=str(digits_cache)))


def test_digits_teacher_reaches_97_percent(digits_cache):
    cfg = config.build("digits-2w2a", cache_dir=str(digits_cache))
    teacher = models.load_teacher(cfg)
    acc = data.evaluate(teacher, data.load_eval(cfg), "cpu")
    assert acc["top1"] >= 97.0, acc


def test_digits_teacher_is_deterministic(digits_cache):
    saved = torch.load(digits_cache / "teachers" / "digits_resnet8.pt", weights_only=True)
    again = prepare.train_digits_teacher()
    assert saved.keys() == again.keys()
    assert all(torch.equal(saved[k], again[k]) for k in saved)


def test_prepare_again_is_a_no_op(digits_cache):
    path = digits_cache / "teachers" / "digits_resnet8.pt"
    before = path.stat().st_mtime_ns
    prepare.prepare(config.build("digits-2w2a", cache_dir=str(digits_cache)))
    assert path.stat().st_mtime_ns == before


def test_concurrent_prepares_train_once(tmp_path, monkeypatch):
    calls = []

    def fake_train():
        calls.append(1)
        time.sleep(0.3)                                # long enough for the other to wait
        return models.create("digits_resnet8").state_dict()

    monkeypatch.setattr(prepare, "train_digits_teacher", fake_train)
    cfg = config.build("digits-2w2a", cache_dir=str(tmp_path))
    threads = [threading.Thread(target=prepare.prepare, args=(cfg,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert [p.name for p in (tmp_path / "teachers").iterdir()] == ["digits_resnet8.pt"]


def test_download_failure_says_internet_and_offers_teacher_weights(tmp_path, monkeypatch):
    def offline(name, root):
        raise OSError("Failed to resolve 'github.com'")

    monkeypatch.setattr(prepare, "_pytorchcv_pretrained", offline)
    cfg = config.build(teacher="resnet20_cifar10", eval_data="synthetic", cache_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="needs internet.*github.com.*--teacher-weights PATH"):
        prepare.prepare(cfg)
    assert not (tmp_path / "teachers").exists()


def test_what_prepare_cannot_fetch_is_explained(tmp_path):
    cfg = config.build(teacher="resnet20_cifar10_a", eval_data="synthetic", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--teacher-weights PATH.*akamaster"):
        prepare.prepare(cfg)
    cfg = config.build("imagenet-resnet18-4w4a", teacher_weights="random",
                       eval_data=f"imagenet:{tmp_path / 'val'}", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="cannot download ImageNet.*VALDIR/<wnid>"):
        prepare.prepare(cfg)
    with pytest.raises(ValueError, match="does not exist"):
        prepare.ensure_ready(config.build("digits-2w2a", teacher_weights=str(tmp_path / "x.pt")))
    with pytest.raises(ValueError, match="teacher 'resnet20_cifar10' takes"):
        prepare.ensure_ready(config.build(teacher="resnet20_cifar10", eval_data="digits"))


def test_cli_prints_what_it_did(digits_cache, capsys):
    assert prepare.main(["--preset", "digits-smoke", "--cache", str(digits_cache)]) == 0
    out = capsys.readouterr().out
    assert "weights present" in out and "ready: teacher digits_resnet8" in out
    assert prepare.main(["--teacher", "resnet20_cifar10_a", "--eval-data", "synthetic",
                         "--cache", str(digits_cache)]) == 1
    assert "--teacher-weights PATH" in capsys.readouterr().err


def test_module_entry_point_prints_progress(digits_cache):
    """`python -m qimera_core.prepare` (a second copy of the module) still prints its log lines."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "qimera_core.prepare", "--preset", "digits-2w2a",
                           "--cache", str(digits_cache)], capture_output=True, text=True,
                          env=env, cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "teacher digits_resnet8: weights present" in proc.stdout


@pytest.mark.parametrize("name", [n for n, s in models.TEACHERS.items() if s.source == "pytorchcv"])
def test_pytorchcv_publishes_weights_for_every_pytorchcv_teacher(name):
    """prepare fetches these through pytorchcv's own model store: it must list the name, with
    weights for exactly our architecture (same trainable-parameter count). Nothing downloads."""
    from pytorchcv.models.common.model_store import get_model_weight_count
    model = models.create(name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert get_model_weight_count(name) == trainable
