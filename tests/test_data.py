"""Evaluation data: normalisation constants, the fixed digits split, npz/synthetic/ImageFolder
loading, compatibility checks against the teacher, and exact top-1/top-5 scoring."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qimera_core import config, data, models

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cfg_for(**kw) -> config.TrainConfig:
    return config.build(**{"teacher": "tiny_resnet", "teacher_weights": "random",
                           "eval_data": "synthetic", **kw})


def test_norms_are_the_method_constants():
    assert data.NORMS["cifar10"] == ((0.49139968, 0.48215827, 0.44653124),
                                     (0.24703233, 0.24348505, 0.26158768))
    assert data.NORMS["cifar100"] == ((0.50705882, 0.48666667, 0.44078431),
                                      (0.26745098, 0.25568627, 0.27607843))
    assert data.NORMS["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert data.NORMS["none"] == ((0.0,), (1.0,))


def test_digits_norm_is_the_train_split_pixel_statistics():
    mean, std = data.digits_pixel_stats()
    assert data.NORMS["digits"][0][0] == pytest.approx(mean, abs=1e-8)
    assert data.NORMS["digits"][1][0] == pytest.approx(std, abs=1e-8)


def test_digits_split_is_fixed_stratified_and_disjoint():
    _, labels = data._digits_arrays()
    train, test = data.digits_split_indices(labels)
    assert (len(train), len(test)) == (1262, 535)
    assert not set(train) & set(test) and len(set(train) | set(test)) == len(labels)
    assert test[:6].tolist() == [30, 31, 32, 34, 38, 41]         # pinned: the split never moves
    frac = np.bincount(labels[test]) / np.bincount(labels)
    assert frac.min() > 0.28 and frac.max() < 0.32               # ~30 % of every class
    again_train, again_test = data.digits_split_indices(labels)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)


def test_digits_eval_and_train_sets():
    ev = data.load_eval(config.build("digits-2w2a", eval_limit=0))
    tr = data.digits_train_split()
    assert (len(ev), len(tr), ev.num_classes) == (535, 1262, 10)
    assert ev.images.shape == (535, 1, 8, 8) and ev.images.dtype == torch.uint8
    assert int(ev.images.max()) == 16 and ev.scale == 16.0 and ev.normalization == "digits"
    mean, std = data.NORMS["digits"]
    expected = (ev.images.float() / 16 - mean[0]) / std[0]
    assert torch.allclose(ev.normalized(), expected, atol=1e-6)


def write_npz(path: Path, n: int = 5, hw: int = 32, labels=None) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(n) % 10 if labels is None else labels)
    return images


def test_npz_is_read_as_chw_and_normalised_per_the_teacher(tmp_path):
    images = write_npz(tmp_path / "x.npz")
    cfg = config.build(teacher="resnet20_cifar10", eval_data=f"npz:{tmp_path / 'x.npz'}",
                       eval_batch_size=2)
    ev = data.load_eval(cfg)
    assert ev.images.shape == (5, 3, 32, 32) and ev.labels.tolist() == [0, 1, 2, 3, 4]
    assert ev.images[1, 2, 3, 4] == images[1, 3, 4, 2]
    assert ev.normalization == "cifar10"
    batches = list(ev.batches(device="cpu"))
    assert [len(y) for _, y in batches] == [2, 2, 1]
    mean, std = data.norm_tensors("cifar10")
    assert torch.equal(torch.cat([x for x, _ in batches]),
                       (ev.images.float() / 255 - mean) / std)
    override = data.load_eval(config.build(teacher="resnet20_cifar10", normalization="imagenet",
                                           eval_data=f"npz:{tmp_path / 'x.npz'}"))
    assert override.normalization == "imagenet"


def test_bad_npz_files_fail_clearly(tmp_path):
    cfg = config.build(teacher="resnet20_cifar10", eval_data=f"npz:{tmp_path / 'none.npz'}")
    with pytest.raises(ValueError, match="none.npz.*not found"):
        data.load_eval(cfg)
    write_npz(tmp_path / "big.npz", labels=np.array([0, 1, 2, 3, 10]))
    with pytest.raises(ValueError, match=r"labels must be in 0..9"):
        data.load_eval(config.build(teacher="resnet20_cifar10",
                                    eval_data=f"npz:{tmp_path / 'big.npz'}"))
    write_npz(tmp_path / "small.npz", hw=8)
    with pytest.raises(ValueError, match=r"\(3, 8, 8\).*takes \(3, 32, 32\)"):
        data.load_eval(config.build(teacher="resnet20_cifar10",
                                    eval_data=f"npz:{tmp_path / 'small.npz'}"))


@pytest.mark.skipif(not (SHARED / "cifar10-test-first1000.npz").is_file(),
                    reason="needs ../shared/data")
def test_shared_cifar10_npz_loads():
    ev = data.load_eval(config.build(teacher="resnet20_cifar10",
                                     eval_data=f"npz:{SHARED / 'cifar10-test-first1000.npz'}"))
    assert ev.images.shape == (1000, 3, 32, 32) and len(ev) == 1000
    assert sorted(ev.labels.unique().tolist()) == list(range(10))


def test_synthetic_is_one_fixed_test_set_and_limit_keeps_the_first():
    a, b = data.load_eval(cfg_for(seed=1)), data.load_eval(cfg_for(seed=1))
    c = data.load_eval(cfg_for(seed=2))
    assert a.images.shape == (data.SYNTHETIC_SIZE, 3, 8, 8)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # like a real test set it does not move with the run's seed (a pack scores all its
    # members on one set), and it is not constant
    assert torch.equal(a.images, c.images) and torch.equal(a.labels, c.labels)
    assert a.images.float().std() > 50 and a.labels.unique().numel() > 5
    short = data.load_eval(cfg_for(seed=1, eval_limit=10))
    assert len(short) == 10 and torch.equal(short.images, a.images[:10])


def test_data_that_does_not_fit_the_teacher_is_refused():
    cfg = config.build(teacher="resnet20_cifar10", eval_data="digits")
    with pytest.raises(ValueError, match="teacher 'resnet20_cifar10' takes"):
        data.check_compatible(cfg)                   # before anything is read
    with pytest.raises(ValueError, match="100 classes"):
        data.check_compatible(config.build(teacher="resnet20_cifar10", eval_data="cifar100"))
    with pytest.raises(ValueError, match="3 channels but the images have 1"):
        data.load_eval(config.build("digits-2w2a", normalization="cifar10"))


def test_missing_cifar_names_the_prepare_command(tmp_path):
    cfg = config.build("cifar10-resnet20-4w4a", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="python -m qimera_core.prepare --teacher "
                                         "resnet20_cifar10 --eval-data cifar10"):
        data.load_eval(cfg)


def make_image_folder(root: Path, classes: int = 3, per_class: int = 2) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"n{c:08d}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"n{c:08d}" / f"{i}.png")


def test_image_folder_streams_resized_normalised_batches(tmp_path):
    make_image_folder(tmp_path / "val")
    ev = data.ImageFolderEvalSet(tmp_path / "val", "imagenet", limit=0, num_workers=0)
    assert (len(ev), ev.num_classes) == (6, 3)
    batches = list(ev.batches(4, "cpu"))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 224, 224), (2, 3, 224, 224)]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 0, 1, 1, 2, 2]
    assert batches[0][0].dtype == torch.float32 and batches[0][0].min() < -1.5
    spread = data.ImageFolderEvalSet(tmp_path / "val", "imagenet", limit=3, num_workers=0)
    assert spread.labels.tolist() == [0, 1, 2]        # evenly spaced, not the first class only


def test_inceptionv3_evaluates_imagenet_at_299(tmp_path):
    """Resize to 342 (the usual 0.875 ratio) and centre-crop to the teacher's 299 px."""
    make_image_folder(tmp_path / "val", per_class=1)
    cfg = config.build("imagenet-inceptionv3-4w4a", eval_data=f"imagenet:{tmp_path / 'val'}",
                       eval_limit=0)
    data.check_compatible(cfg)
    with pytest.raises(ValueError, match=r"has images \(3, 224, 224\)"):
        data._check_matches(cfg, models.spec("inceptionv3"), (3, 224, 224), 1000)
    ev = data.ImageFolderEvalSet(tmp_path / "val", "imagenet", limit=0, num_workers=0, crop=299)
    assert tuple(next(ev.batches(2, "cpu"))[0].shape) == (2, 3, 299, 299)


def test_imagenet_folder_checks(tmp_path):
    cfg = config.build("imagenet-resnet18-4w4a", eval_data=f"imagenet:{tmp_path / 'val'}")
    with pytest.raises(ValueError, match="lay it out as VALDIR/<synset>"):
        data.load_eval(cfg)
    make_image_folder(tmp_path / "val", per_class=1)
    with pytest.raises(ValueError, match="3 classes"):
        data.load_eval(cfg)


class _RankModel(nn.Module):
    """Logits rank classes by distance to the pixel value: top-1 = v, then v-1/v+1, v-2/v+2."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = (x.flatten(1)[:, :1] * 255).round()
        return -(torch.arange(self.classes) - v).abs() - 0.1 * torch.arange(self.classes)


def test_evaluate_counts_top1_and_top5_over_all_images():
    images = torch.tensor([5, 5, 5, 2, 2, 8, 9], dtype=torch.uint8).view(-1, 1, 1, 1)
    labels = torch.tensor([5, 6, 0, 2, 4, 3, 9])     # hit, top5, miss, hit, top5, miss, hit
    ev = data.EvalSet(images, labels, 10, "none", batch_size=3)
    assert data.evaluate(_RankModel(10), ev, "cpu") == {"top1": pytest.approx(300 / 7),
                                                        "top5": pytest.approx(500 / 7)}
    small = data.EvalSet(images[:3] * 0, torch.tensor([0, 1, 2]), 3, "none")
    assert data.evaluate(_RankModel(3), small, "cpu") == {"top1": pytest.approx(100 / 3),
                                                          "top5": 100.0}     # k = min(5, C)
