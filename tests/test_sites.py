"""Activation quantizers per call site (torch.fx) vs the official per-module quantizer: layer
counts of Table 10's teachers derived by hand, 8-bit parity with the float model, the official
mode's behaviour, and a 2-step run of each Table 10 preset (random weights, synthetic data)."""

import copy
import math

import pytest
import torch
from torch import nn

from qimera_core import models, quant, sites
from qimera_core.config import TABLE10_PRESETS, build
from qimera_core.train import train

# Expected (convs, linears, activation quantizers) per mode, derived from the architectures:
EXPECTED = {
    # torchvision resnet18: stem conv + 8 BasicBlocks x 2 convs + 3 downsample 1x1 convs = 20;
    # fc = 1. Each block has ONE nn.ReLU called twice (after bn1 and after the residual add),
    # plus the stem's ReLU: module mode 1 + 8 = 9 quantizers, call sites 1 + 8 x 2 = 17.
    "tv:resnet18": {"call_site": (20, 1, 17), "module": (20, 1, 9)},
    # pytorchcv shufflenet_g1_w1: init block conv (1) + 16 units (stages of 4, 8, 4) x 3 convs
    # (1x1 group compress, 3x3 depthwise, 1x1 group expand) = 49; output Linear = 1. Each unit
    # has ONE `activ` called twice (after compress_bn1 and after the add/concat), plus the init
    # block's: module mode 1 + 16 = 17 quantizers, call sites 1 + 16 x 2 = 33.
    "shufflenet_g1_w1": {"call_site": (49, 1, 33), "module": (49, 1, 17)},
    # pytorchcv sqnxt23_w2: 21 units (stages of 6, 6, 8, 1) x 5 conv blocks = 105, plus an
    # identity conv in the 4 units that resize (the first of stage 1, where 128 > 64 channels,
    # and the stride-2 firsts of stages 2-4), the 7x7 init conv and the final 1x1 block:
    # 105 + 4 + 1 + 1 = 111 convs; Linear = 1. Every conv block has its own ReLU (111) and every
    # unit its own ReLU after the add (21): 132, each called once, so both modes agree.
    "sqnxt23_w2": {"call_site": (111, 1, 132), "module": (111, 1, 132)},
    # pytorchcv inceptionv3: stem 5 convs; 3 InceptionA x 7 (1x1; 5x5: 2; 3x3dbl: 3; pool: 1)
    # = 21; ReductionA 1 + 3 = 4; 4 InceptionB x 10 (1x1; 7x7: 3; 7x7dbl: 5; pool: 1) = 40;
    # ReductionB 2 + 4 = 6; 2 InceptionC x 9 (1x1; 3x3: 1 + 2 split; 3x3dbl: 2 + 2 split;
    # pool: 1) = 18. Total 94 convs, each in a conv block with its own ReLU called once; fc = 1.
    "inceptionv3": {"call_site": (94, 1, 94), "module": (94, 1, 94)},
}


@pytest.fixture(scope="module")
def float_models():
    out = {}
    for name in EXPECTED:
        torch.manual_seed(0)
        out[name] = models.create(name).eval()
    return out


def counts(model: nn.Module) -> tuple[int, int, int]:
    return (sum(isinstance(m, quant.QuantConv2d) for m in model.modules()),
            sum(isinstance(m, quant.QuantLinear) for m in model.modules()),
            len(quant.act_quantizers(model)))


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("mode", sites.SITES)
def test_quantized_layer_counts_per_mode(float_models, name, mode):
    q = quant.quantize(copy.deepcopy(float_models[name]), w_bits=4, a_bits=4, sites=mode)
    assert counts(q) == EXPECTED[name][mode]
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in q.modules())  # none left FP


@pytest.mark.parametrize("name", ["tv:resnet18", "shufflenet_g1_w1"])
def test_call_sites_each_get_their_own_range_and_module_mode_shares(float_models, name):
    """One forward: per call site no quantizer runs twice; the official mode reuses one per
    shared module, so (call sites - module quantizers) calls share a range."""
    x = torch.randn(1, *models.spec(name).input_shape)
    per_site = quant.quantize(copy.deepcopy(float_models[name]), w_bits=8, a_bits=8)
    official = quant.quantize(copy.deepcopy(float_models[name]), w_bits=8, a_bits=8,
                              sites="module")
    a, b = sites.coverage(per_site, x), sites.coverage(official, x)
    assert (a["shared_range_calls"], a["unquantized_relu_calls"]) == (0, 0)
    n_sites, n_modules = EXPECTED[name]["call_site"][2], EXPECTED[name]["module"][2]
    assert b["shared_range_calls"] == n_sites - n_modules > 0
    quant.audit_activations(per_site, x)                  # strict mode accepts it
    quant.audit_activations(official, x, sites="module")  # the official mode accepts sharing
    with pytest.raises(ValueError, match="shared by several call sites"):
        quant.audit_activations(official, x)              # but per-call-site mode would not


def test_8bit_per_call_site_model_matches_the_float_model(float_models):
    """ShuffleNet (shared ReLUs, so a GraphModule) at 8 bits after one calibration forward
    (official recurrence: one update sets the range to that batch's min/max). Tolerance: the
    logits' relative L2 error under 3 % (measured about 1 % with random weights)."""
    fp = float_models["shufflenet_g1_w1"]
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    q = quant.quantize(copy.deepcopy(fp), w_bits=8, a_bits=8)
    assert isinstance(q, torch.fx.GraphModule)
    with torch.no_grad():
        quant.set_calibration(q, True)
        q(x)
        quant.set_calibration(q, False)
        y, yq = fp(x), q(x)
    rel = ((yq - y).norm() / y.norm()).item()
    print(f"8-bit shufflenet logits: relative L2 error {rel:.4f}")
    assert rel < 0.03, rel
    assert torch.equal(yq.argmax(1), y.argmax(1))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = nn.functional.relu6(x - 1)
        return self.fc(x.mean((2, 3)))


def test_functional_relus_get_quantizers_only_per_call_site():
    x = torch.randn(2, 3, 8, 8)
    q = quant.quantize(Functional(), w_bits=4, a_bits=4)
    kinds = sorted(type(a.act).__name__ for a in quant.act_quantizers(q))
    assert kinds == ["ReLU", "ReLU6"]
    assert sites.coverage(q, x)["unquantized_relu_calls"] == 0
    official = quant.quantize(Functional(), w_bits=4, a_bits=4, sites="module")
    assert quant.act_quantizers(official) == []
    assert sites.coverage(official, x)["unquantized_relu_calls"] == 2
    quant.audit_activations(official, x, sites="module")   # allowed: the official behaviour


def test_resnet20_is_the_same_model_in_both_modes():
    """Each ReLU module called once: call_site mode changes nothing (no GraphModule, same
    state_dict keys), which is why existing results and config hashes stay valid."""
    a = quant.quantize(models.create("resnet20_cifar10"), w_bits=4, a_bits=4)
    b = quant.quantize(models.create("resnet20_cifar10"), w_bits=4, a_bits=4, sites="module")
    assert type(a) is type(b) and not isinstance(a, torch.fx.GraphModule)
    assert list(a.state_dict()) == list(b.state_dict())
    assert build("cifar10-resnet20-4w4a").config_hash != \
        build("cifar10-resnet20-4w4a", act_quant_sites="module").config_hash


@pytest.mark.parametrize("mode", sites.SITES)
def test_gelu_and_silu_are_refused_naming_the_layer(mode):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 1), nn.SiLU())
    q = quant.quantize(model, w_bits=4, a_bits=4, sites=mode)
    with pytest.raises(ValueError, match=r"'1 \(GELU\)', '3 \(SiLU\)'"):
        quant.audit_activations(q, torch.zeros(1, 3, 8, 8), sites=mode)


def test_audit_cli_prints_counts_per_mode(capsys):
    """tiny_resnet: stem conv + 2 blocks x 2 convs + the stride-2 block's 1x1 shortcut = 6
    convs, 1 Linear, 5 ReLU modules (stem + 2 per block) each called once."""
    assert sites.main(["--teacher", "tiny_resnet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["tiny_resnet", "call_site", "6", "1", "5", "0", "0"]
    assert out[2].split() == ["tiny_resnet", "module", "6", "1", "5", "0", "0"]


@pytest.mark.parametrize("preset", TABLE10_PRESETS)
def test_table10_preset_trains_two_steps(preset, tmp_path):
    cfg = build(preset, teacher_weights="random", eval_data="synthetic", batch_size=2,
                epochs=1, steps_per_epoch=2, warmup_epochs=0, act_range_epochs=1,
                eval_start_epoch=0, eval_batch_size=4, eval_limit=4, device="cpu")
    seen = []
    final = train(cfg, tmp_path, report=lambda m, checkpoint_dir=None: seen.append(dict(m)))
    assert final["status"] == "ok" and len(seen) == 1
    assert math.isfinite(final["loss_s"]) and 0 <= seen[0]["top1"] <= 100
