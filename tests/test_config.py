"""TrainConfig: validation branches, presets, from_dict, hashing and the generated CLI flags."""

import argparse
import dataclasses
import hashlib
import json

import pytest

from qimera_core.config import (
    GDFQ_SWITCHES,
    HASH_DEFAULTS,
    OFFICIAL_EMB_INIT,
    PRESETS,
    TrainConfig,
    add_config_flags,
    build,
    field_help,
    overrides_from_args,
)


@pytest.mark.parametrize("kw,needle", [
    (dict(mix_prob=1.5), "mix_prob"),
    (dict(mix_classes=0), "mix_classes"),
    (dict(mix_mode="row"), "mix_mode"),
    (dict(dm_layers=-1), "dm_layers"),
    (dict(dm_activation="tanh"), "dm_activation"),
    (dict(noise_sigma=-1.0), "noise_sigma"),
    (dict(w_bits=1), "w_bits"),
    (dict(a_bits=9), "a_bits"),
    (dict(emb_init="zeros"), "emb_init"),
    (dict(emb_init="random", freeze_embeddings=True), "freeze_embeddings"),
    (dict(latent_input="concat"), "latent_input"),
    (dict(latent_input="multiplicative"), "multiplicative"),
    (dict(cbn_mix="max"), "cbn_mix"),
    (dict(epochs=0), "epochs"),
    (dict(batch_size=1), "batch_size"),
    (dict(warmup_epochs=500), "warmup_epochs"),
    (dict(act_range_epochs=0), "act_range_epochs"),
    (dict(act_range_mode="median"), "act_range_mode"),
    (dict(act_ema_beta=1.0), "act_ema_beta"),
    (dict(act_quant_sites="tensor"), "act_quant_sites must be 'call_site'"),
    (dict(lr_student=0.0), "lr_student"),
    (dict(lr_milestones=(300, 100)), "lr_milestones"),
    (dict(kd_reduction="sum"), "kd_reduction"),
    (dict(eval_limit=-1), "eval_limit"),
    (dict(device="tpu"), "device"),
    (dict(num_threads=-2), "num_threads"),
    (dict(normalization="zscore"), "normalization"),
    (dict(eval_data="mnist"), "eval_data"),
    (dict(eval_data="npz:"), "npz"),
    (dict(method="zeroq"), "method"),
    (dict(teacher="resnet21"), "unknown teacher"),
    (dict(method="gdfq"), "GDFQ|gdfq"),
    (dict(epochs=2.5), "epochs must be an integer"),
    (dict(freeze_embeddings="yes"), "freeze_embeddings must be true or false"),
])
def test_each_validation_branch_raises(kw, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**kw)


def test_from_dict_rejects_unknown_keys_and_round_trips():
    with pytest.raises(ValueError, match="unknown config keys.*mix_porb"):
        TrainConfig.from_dict({"mix_porb": 0.3})
    cfg = build("cifar100-resnet20-4w4a", seed=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    d["lr_milestones"] = list(d["lr_milestones"])        # as Parquet/JSON/Tune give it back
    assert TrainConfig.from_dict(d) == cfg


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().mix_prob = 0.1


def test_presets_follow_the_paper():
    c = build("cifar100-resnet20-4w4a")
    assert (c.w_bits, c.a_bits, c.mix_prob, c.mix_classes) == (4, 4, 0.4, 10)  # not the 5w5a bug
    assert c.dm_layers == 1 and c.emb_init == "extracted" and not c.freeze_embeddings
    r50 = build("imagenet-resnet50-4w4a")
    assert (r50.mix_prob, r50.mix_classes, r50.batch_size, r50.warmup_epochs) == (0.7, 500, 16, 50)
    assert r50.lr_student == 1e-6
    for name in PRESETS:
        bits = name.rsplit("-", 1)[-1]
        if bits[0].isdigit():
            cfg = build(name)
            assert f"{cfg.w_bits}w{cfg.a_bits}a" == bits
    assert OFFICIAL_EMB_INIT["cifar10-resnet20-4w4a"] == "random"
    assert OFFICIAL_EMB_INIT["imagenet-resnet50-5w5a"] == "extracted"


def test_gdfq_method_applies_the_switches():
    c = build("cifar10-resnet20-4w4a", method="gdfq")
    assert all(getattr(c, k) == v for k, v in GDFQ_SWITCHES.items())
    with pytest.raises(ValueError, match="gdfq"):
        build("cifar10-resnet20-4w4a", method="gdfq", dm_layers=1)


def test_act_quant_sites_at_its_default_leaves_the_hash_as_before_the_field():
    """call_site quantizes every teacher that could run before the field existed exactly as
    then, so those trials keep their hash; the official mode is another trial."""
    a = build("cifar10-resnet20-4w4a")
    later = tuple(HASH_DEFAULTS)          # fields added since, left out at their defaults
    d = {k: v for k, v in a.to_dict().items()
         if k not in ("device", "num_threads", "cache_dir", *later)}
    blob = json.dumps(d, sort_keys=True, default=list).encode()
    assert a.config_hash == hashlib.sha256(blob).hexdigest()[:16]
    assert dataclasses.replace(a, act_quant_sites="module").config_hash != a.config_hash


def test_tf32_at_its_default_leaves_the_hash_as_before_the_field():
    """tf32='conv' is what every run did before the field (PyTorch's default), so those
    trials keep their hash (these two were computed before the field existed); other modes
    change GPU numerics and are other trials."""
    a, b = build("cifar10-resnet20-4w4a"), build("digits-offline", seed=2)
    assert (a.config_hash, b.config_hash) == ("26cfc074c97c34cf", "1eba92ebfb3c24ad")
    assert a.tf32 == "conv" and dataclasses.replace(a, tf32="off").config_hash != a.config_hash
    with pytest.raises(ValueError, match="tf32 must be one of"):
        build("digits-offline", tf32="on")


def test_hash_covers_results_not_placement():
    a = build("digits-2w2a")
    assert a.config_hash == dataclasses.replace(a, device="cpu", num_threads=1,
                                                cache_dir="/x").config_hash
    assert a.config_hash != dataclasses.replace(a, seed=1).config_hash
    assert a.config_hash != dataclasses.replace(a, mix_prob=0.41).config_hash


def test_cli_flags_from_fields():
    p = argparse.ArgumentParser()
    add_config_flags(p)
    args = p.parse_args(["--mix-prob", "0.25", "--no-freeze-embeddings", "--lr-milestones",
                         "10,20", "--teacher", "tiny_resnet"])
    over = overrides_from_args(args)
    assert over == {"mix_prob": 0.25, "freeze_embeddings": False, "lr_milestones": "10,20",
                    "teacher": "tiny_resnet"}
    assert build(**over).lr_milestones == (10, 20)


def test_every_flag_help_says_what_the_field_means():
    """Each field's help is its `help` metadata, written once in config.py: not empty, not just
    its default, and it is what `--help` prints for the flag (in both CLIs that use the
    fields)."""
    p = argparse.ArgumentParser()
    add_config_flags(p)
    by_dest = {a.dest: a for a in p._actions}
    for f in dataclasses.fields(TrainConfig):
        meaning = field_help(f.name)
        assert meaning.strip(), f"{f.name} has no help metadata"
        assert meaning.strip() not in (str(f.default), repr(f.default), "(default: )"), f.name
        assert len(meaning.split()) >= 2, f"{f.name}'s help {meaning!r} says too little"
        helptext = by_dest[f.name].help
        assert helptext.startswith(meaning) and "(default: " in helptext, (f.name, helptext)
        assert not helptext.startswith("(default:"), f.name


def test_help_text_reaches_both_commands(capsys):
    from qimera_core.cli import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())      # argparse wraps lines
    assert " ".join(field_help("mix_prob").split()) in out
    assert "(default: 100,200,300)" in out               # a tuple default as the flag takes it
    from sweeps.cli import build_parser
    text = " ".join(build_parser("table9", "").format_help().split())
    assert " ".join(field_help("noise_sigma").split()) in text


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        build("cifar10-resnet56-4w4a")
