"""The training loop end to end on tiny real components: reporting, resume, divergence, CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qimera_core import checkpoint, models, results
from qimera_core.config import build
from qimera_core.train import main, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TIMING = {"wall_time_s", "step_time_s"}


def tiny(**kw):
    base = dict(teacher="tiny_resnet", teacher_weights="random", eval_data="synthetic",
                epochs=2, steps_per_epoch=3, batch_size=8, warmup_epochs=1,
                act_range_epochs=1, lr_student=0.05, lr_milestones=(1,), device="cpu",
                num_threads=1, mix_prob=0.5, mix_classes=3)
    if kw.get("method") == "gdfq":
        del base["mix_prob"]             # the GDFQ switches set p = 0
    base.update(kw)
    return build(**base)


def collect():
    seen = []
    return seen, lambda m, checkpoint_dir=None: seen.append((dict(m), checkpoint_dir))


def test_reports_once_per_epoch_with_schema_metrics(tmp_path):
    seen, report = collect()
    final = train(tiny(epochs=3), tmp_path, report=report)
    assert final["status"] == "ok"
    assert [m["epoch"] for m, _ in seen] == [1, 2, 3]
    for m, ckpt in seen:
        assert set(m) == set(results.METRICS)
        assert ckpt == tmp_path / "checkpoint" and checkpoint.exists(ckpt)
    first = seen[0][0]
    assert math.isnan(first["loss_s"]) and not math.isnan(seen[1][0]["loss_s"])
    assert seen[-1][0]["best_top1"] == max(m["top1"] for m, _ in seen)
    assert list(tmp_path.iterdir()) == [tmp_path / "checkpoint"]   # writes only its own dir


def test_start_top1_is_taken_at_the_end_of_warm_up_and_then_kept(tmp_path):
    # Two warm-up epochs: start_top1 is unknown after the first, is the second epoch's top-1
    # (the student is still untouched then), and stays fixed while the trained student moves.
    seen, report = collect()
    train(tiny(epochs=5, warmup_epochs=2, lr_student=0.5, lr_milestones=(100,)), tmp_path,
          report=report)
    m = [x for x, _ in seen]
    assert math.isnan(m[0]["start_top1"])
    assert all(x["start_top1"] == m[1]["top1"] for x in m[1:])
    assert any(x["top1"] != m[1]["top1"] for x in m[2:])     # the student did change later


class Killed(Exception):
    pass


def test_resume_from_epoch_one_matches_uninterrupted_run(tmp_path):
    cfg = tiny()
    clean_seen, clean_report = collect()
    clean = train(cfg, tmp_path / "clean", report=clean_report)

    def die_after_first(m, checkpoint_dir=None):
        raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "killed", report=die_after_first)
    resumed_seen, resumed_report = collect()
    resumed = train(cfg, tmp_path / "killed", report=resumed_report,
                    resume_from=tmp_path / "killed" / "checkpoint")
    assert [m["epoch"] for m, _ in resumed_seen] == [2]
    for k in set(clean) - TIMING:
        assert clean[k] == resumed[k] or (math.isnan(clean[k]) and math.isnan(resumed[k])), k
    a = checkpoint.load(tmp_path / "clean" / "checkpoint")
    b = checkpoint.load(tmp_path / "killed" / "checkpoint")
    for part in ("student", "generator"):
        for name, t in a[part].items():
            assert torch.equal(t, b[part][name]), (part, name)


def test_resume_refuses_a_different_config(tmp_path):
    train(tiny(epochs=1), tmp_path, report=lambda m, checkpoint_dir=None: None)
    with pytest.raises(ValueError, match="different config"):
        train(tiny(epochs=1, mix_prob=0.1), tmp_path, resume_from=tmp_path / "checkpoint")


def test_nan_loss_stops_the_run_with_a_clear_status(tmp_path):
    model = models.create("tiny_resnet")
    sd = model.state_dict()
    first_conv = next(k for k in sd if k.endswith("weight") and sd[k].dim() == 4)
    sd[first_conv][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    seen, report = collect()
    final = train(tiny(teacher_weights=str(tmp_path / "nan.pt"), epochs=5), tmp_path / "run",
                  report=report)
    assert final["status"] == "diverged" and final["diverged"] == 1
    assert len(seen) == 1 and seen[0][0]["diverged"] == 1


def test_gdfq_and_per_sample_and_multi_dm_variants_train(tmp_path):
    for i, kw in enumerate([dict(method="gdfq"), dict(mix_mode="sample", dm_layers=3),
                            dict(method="gdfq", latent_input="multiplicative"),
                            dict(freeze_embeddings=True, act_range_mode="ema",
                                 kd_reduction="batchmean")]):
        final = train(tiny(epochs=1, warmup_epochs=0, **kw), tmp_path / str(i),
                      report=lambda m, checkpoint_dir=None: None)
        assert final["status"] == "ok" and math.isfinite(final["loss_s"])


def test_import_leaves_ray_out():
    code = "import sys, qimera_core, qimera_core.train; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_writes_result_json_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--teacher", "tiny_resnet", "--teacher-weights", "random", "--eval-data",
            "synthetic", "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "8",
            "--warmup-epochs", "1", "--act-range-epochs", "1", "--device", "cpu",
            "--num-threads", "1", "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and res["metrics"]["epoch"] == 2
    assert res["config"]["teacher"] == "tiny_resnet"
    assert "final top-1" in capsys.readouterr().out
    assert len(results.read(out, "trials")) == 1
    with pytest.raises(SystemExit):
        main(args)                       # a checkpoint exists: refuse without --resume
    assert main(args + ["--resume"]) == 0


@pytest.mark.skipif(not (SHARED / "resnet20_cifar10_akamaster.th").exists(),
                    reason="../shared/data (akamaster checkpoint, CIFAR-10 npz) not present")
def test_akamaster_teacher_short_4w4a_run(tmp_path):
    cfg = build("cifar10-resnet20-4w4a", teacher="resnet20_cifar10_a",
                teacher_weights=str(SHARED / "resnet20_cifar10_akamaster.th"),
                eval_data=f"npz:{SHARED / 'cifar10-test-first1000.npz'}", epochs=2,
                steps_per_epoch=2, batch_size=32, warmup_epochs=1, act_range_epochs=1,
                device="cpu")
    seen, report = collect()
    final = train(cfg, tmp_path, report=report)
    assert final["status"] == "ok" and len(seen) == 2
    assert final["teacher_top1"] == pytest.approx(91.5)
    # 4w4a after two calibration updates (the official range recurrence still overshoots,
    # method doc §2.3): the quantized student must sit far below its teacher (11.5 % here).
    # A student that was not quantized, or evaluated as the teacher, fails this.
    assert final["start_top1"] < final["teacher_top1"] - 40
    assert math.isfinite(final["loss_s"]) and math.isnan(seen[0][0]["loss_s"])


@pytest.mark.integration
def test_offline_default_preset_recovers_accuracy(tmp_path):
    """`--preset digits-2w2a` on a fresh cache: trains the digits teacher, then Qimera must
    lift the 2-bit student clearly above where it started."""
    out = tmp_path / "run"
    assert main(["--preset", "digits-2w2a", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    m = json.loads((out / "result.json").read_text())["metrics"]
    assert m["teacher_top1"] > 97
    assert m["start_top1"] < m["teacher_top1"] - 20          # quantization really hurts
    # and training recovers a clear part. One seed: seed 0 gained 11.2 points on one machine and
    # 9.7 on this AVX2 one (start 56.45 vs 57.94, float rounding), and the final top-1's seed std
    # is 5.6 (docs/training.md); untrained, the gain is 0. A 5-point bar keeps the check.
    assert m["top1"] > m["start_top1"] + 5


def test_imagenet_path_mobilenetv2_cbn_relu6_conv_classifier(tmp_path):
    """The ImageNet generator (class-conditional BN at 224 px) with a MobileNetV2 teacher:
    ReLU6 quantizers, and embeddings extracted from its 1x1-conv classifier (method doc §2.6)."""
    from qimera_core import quant
    from qimera_core.builders import build_models
    from qimera_core.generator import CondBatchNorm2d

    cfg = build("imagenet-mobilenetv2-4w4a", teacher_weights="random", eval_data="synthetic",
                batch_size=4, epochs=1, steps_per_epoch=2, warmup_epochs=0,
                act_range_epochs=1, eval_start_epoch=0, eval_batch_size=16, eval_limit=16,
                device="cpu")
    teacher, student, generator = build_models(cfg, torch.device("cpu"))
    assert sum(isinstance(m, quant.QuantConv2d) for m in student.modules()) == 54
    assert len(quant.act_quantizers(student)) == 36
    assert isinstance(generator.bn1, CondBatchNorm2d)
    assert torch.equal(generator.embeddings, models.classifier_weight(teacher))
    final = train(cfg, tmp_path, report=lambda m, checkpoint_dir=None: None)
    assert final["status"] == "ok" and math.isfinite(final["loss_s"])


def test_cli_names_the_prepare_command_when_weights_are_missing(tmp_path, capsys):
    code = main(["--teacher", "resnet20_cifar10", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "python -m qimera_core.prepare --teacher resnet20_cifar10" in err
    assert not (tmp_path / "run").exists()          # nothing started, nothing written
