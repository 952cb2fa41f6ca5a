"""Teacher registry: every entry builds and runs, weights load in the accepted formats with clear
errors otherwise, and the akamaster checkpoint reproduces its published accuracy."""

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from qimera_core import config, data, models

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AKAMASTER = SHARED / "resnet20_cifar10_akamaster.th"
CIFAR10_1000 = SHARED / "cifar10-test-first1000.npz"

SMALL = ["resnet20_cifar10", "resnet20_cifar100", "resnet20_cifar10_a", "digits_resnet8",
         "tiny_resnet"]
IMAGENET = ["resnet18", "mobilenetv2_w1", "tv:resnet18"]
TABLE10 = ["inceptionv3", "sqnxt23_w2", "shufflenet_g1_w1"]   # tests/test_sites.py runs them


def random_cfg(teacher: str = "tiny_resnet", **kw) -> config.TrainConfig:
    return config.build(**{"teacher": teacher, "teacher_weights": "random",
                           "eval_data": "synthetic", **kw})


def test_registry_has_the_issue_teachers():
    assert set(SMALL + IMAGENET[:2] + ["resnet50"] + TABLE10) == set(models.TEACHERS)


@pytest.mark.parametrize("name", SMALL + IMAGENET)
def test_entry_builds_runs_and_exposes_its_classifier(name):
    s = models.spec(name)
    torch.manual_seed(0)
    model = models.create(name).eval()
    x = torch.randn(1 if name in IMAGENET else 2, *s.input_shape)
    with torch.no_grad():
        out = model(x)
        feats = models.penultimate_features(model, x)
    w = models.classifier_weight(model)
    assert out.shape == (x.shape[0], s.num_classes)
    assert w.shape[0] == s.num_classes and feats.shape == (x.shape[0], w.shape[1])


def test_resnet50_constructs():
    model = models.create("resnet50")
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert models.classifier_weight(model).shape == (1000, 2048)


def test_mobilenetv2_classifier_is_its_1x1_conv():
    model = models.create("mobilenetv2_w1")
    assert isinstance(models.classifier(model), nn.Conv2d)
    assert models.classifier(model) is model.output


def test_unknown_names_fail_listing_the_valid_ones():
    with pytest.raises(ValueError, match="resnet20_cifar10_a.*tv:NAME"):
        models.spec("resnet21")
    with pytest.raises(ValueError, match="valid names after 'tv:'.*'vgg16'"):
        models.spec("tv:not_a_model")
    with pytest.raises(ValueError, match="not supported"):
        models.spec("tv:squeezenet1_0")
    s = models.spec("tv:vgg11")
    assert (s.source, s.num_classes, s.input_shape, s.normalization) == (
        "torchvision", 1000, (3, 224, 224), "imagenet")


def test_resnet20_a_matches_the_akamaster_layout():
    model = models.create("resnet20_cifar10_a")
    assert sum(p.numel() for p in model.parameters()) == 269_722
    keys = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert {"conv1.weight", "bn1.running_var", "layer2.0.conv1.weight", "layer3.2.bn2.bias",
            "linear.weight", "linear.bias"} <= keys
    assert not any("shortcut" in k for k in keys)      # option A: parameter-free shortcuts
    assert len(keys) == 97                              # the checkpoint's key count


class _CountRelu(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.relu, torch.relu_, nn.functional.relu):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,expected", [("resnet20_cifar10_a", 19), ("digits_resnet8", 7),
                                           ("tiny_resnet", 5)])
def test_every_relu_is_its_own_module_called_once(name, expected):
    """The quantizer puts an activation quantizer after each nn.ReLU module: a functional or
    shared ReLU would run unquantized."""
    model = models.create(name).eval()
    calls: dict[int, int] = {}

    def count(mod: nn.Module, _inputs, _output) -> None:
        calls[id(mod)] = calls.get(id(mod), 0) + 1

    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for m in relus:
        m.register_forward_hook(count)
    with torch.no_grad(), _CountRelu() as counter:
        model(torch.randn(2, *models.spec(name).input_shape))
    assert len(relus) == expected
    assert sorted(calls.values()) == [1] * expected and len(calls) == expected
    assert counter.calls == expected                   # no relu outside the modules


def test_random_weights_are_seeded_frozen_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = models.load_teacher(random_cfg(seed=3)), models.load_teacher(random_cfg(seed=3))
    c = models.load_teacher(random_cfg(seed=4))
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_weights_path_is_a_safe_name_in_the_cache(tmp_path):
    cfg = random_cfg(cache_dir=str(tmp_path))
    assert models.weights_path(cfg) == tmp_path / "teachers" / "tiny_resnet.pt"
    cfg = config.build(teacher="tv:resnet18", eval_data="synthetic", cache_dir=str(tmp_path))
    assert models.weights_path(cfg) == tmp_path / "teachers" / "tv_resnet18.pt"


def test_missing_weights_name_the_file_and_the_prepare_command(tmp_path):
    cfg = config.build("digits-2w2a", cache_dir=str(tmp_path))
    with pytest.raises(ValueError) as e:
        models.load_teacher(cfg)
    msg = str(e.value)
    assert str(tmp_path / "teachers" / "digits_resnet8.pt") in msg
    assert f"python -m qimera_core.prepare --teacher digits_resnet8 --eval-data digits " \
           f"--cache {tmp_path}" in msg
    assert "--teacher-weights PATH" in msg
    with pytest.raises(ValueError, match="nowhere.pt"):
        models.load_teacher(random_cfg(teacher_weights=str(tmp_path / "nowhere.pt")))


def test_plain_wrapped_and_module_prefixed_state_dicts_load(tmp_path):
    torch.manual_seed(1)
    src = models.create("tiny_resnet")
    sd = src.state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"best_prec1": 1.0, "state_dict": {"module." + k: v for k, v in sd.items()}},
               tmp_path / "wrapped.th")
    for name in ("plain.pt", "wrapped.th"):
        loaded = models.load_teacher(random_cfg(teacher_weights=str(tmp_path / name)))
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())


def test_mismatched_weights_list_keys_or_shapes(tmp_path):
    torch.save(models.create("digits_resnet8").state_dict(), tmp_path / "digits.pt")
    with pytest.raises(ValueError, match=r"unexpected keys \(e.g. \['layer3"):
        models.load_teacher(random_cfg(teacher_weights=str(tmp_path / "digits.pt")))
    torch.save(models.create("resnet20_cifar10").state_dict(), tmp_path / "c10.pt")
    cfg = config.build(teacher="resnet20_cifar100", teacher_weights=str(tmp_path / "c10.pt"),
                       eval_data="synthetic")
    with pytest.raises(ValueError, match="do not fit this architecture"):
        models.load_teacher(cfg)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read teacher weights"):
        models.load_teacher(random_cfg(teacher_weights=str(tmp_path / "junk.pt")))


def test_penultimate_features_are_the_classifier_input_and_the_hook_goes():
    torch.manual_seed(0)
    model = models.create("tiny_resnet").eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        feats = models.penultimate_features(model, x)
        assert feats.shape == (4, 16)
        assert torch.allclose(model.linear(feats), model(x))
    assert not model.linear._forward_pre_hooks
    w = models.classifier_weight(model)
    w += 1                                              # a copy: the teacher is untouched
    assert not torch.equal(w, model.linear.weight)


@pytest.mark.skipif(not AKAMASTER.is_file() or not CIFAR10_1000.is_file(),
                    reason="needs ../shared/data (akamaster checkpoint and CIFAR-10 npz)")
def test_akamaster_checkpoint_scores_91_50_on_the_first_1000():
    cfg = config.build("cifar10-resnet20-4w4a", teacher="resnet20_cifar10_a",
                       teacher_weights=str(AKAMASTER), eval_data=f"npz:{CIFAR10_1000}")
    teacher = models.load_teacher(cfg)
    evalset = data.load_eval(cfg)
    assert evalset.normalization == "imagenet" and len(evalset) == 1000
    assert data.evaluate(teacher, evalset, "cpu")["top1"] == pytest.approx(91.5, abs=1e-9)
