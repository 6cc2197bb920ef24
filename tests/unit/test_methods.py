"""SSL methods, their shared base (optimiser, schedule, kNN monitor) and the backbones.

Parametrised over ``names(kind="ssl")``: a fifth method is tested by adding its file.
Tiny on purpose: input 64 px, batches of 4, a couple of steps on CPU.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histo.encoders.backbones import BACKBONES, create_backbone
from histo.encoders.methods import SwAV
from histo.encoders.methods.base import (
    FINETUNE,
    LARS,
    SSLMethod,
    WarmupCosine,
    parameter_groups,
    weighted_knn_accuracy,
    weighted_knn_predict,
)
from histo.encoders.registry import create_encoder, get_spec, names
from histo.errors import InvalidInputError, NotFoundError, UnknownNameError
from tests.helpers import tissue_array

SIZE = 64
BATCH = 4
METHODS = names(kind="ssl")

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*`weights_only` was not set.*")


class Items(Dataset):
    """A list as a map-style Dataset."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _loader(items: list[Any]) -> DataLoader:
    return DataLoader(Items(items), batch_size=BATCH)


def _method(name: str) -> type[SSLMethod]:
    return cast(type[SSLMethod], get_spec(name).factory)


def _model(name: str, **kwargs: Any) -> SSLMethod:
    torch.manual_seed(0)
    model: SSLMethod = create_encoder(
        name, input_size=SIZE, batch_size=BATCH, max_epochs=2, warmup_epochs=0, **kwargs
    )
    return model


def _train_data(
    model: SSLMethod, n: int = 2 * BATCH, labelled: bool = True
) -> list[tuple[list[torch.Tensor], int]]:
    transform = model.train_transform()
    torch.manual_seed(1)
    return [(transform(tissue_array(72, 72, seed=i)), i % 2 if labelled else -1) for i in range(n)]


def _val_data(model: SSLMethod, labelled: bool = True) -> list[tuple[torch.Tensor, int]]:
    transform = model.eval_transform()
    return [(transform(tissue_array(72, 72, seed=100 + i)), i % 2 if labelled else -1) for i in range(BATCH)]


def _trainer(**kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_the_four_methods_are_registered() -> None:
    assert set(METHODS) >= {"simclr", "nnclr", "barlow_twins", "swav"}
    for name in METHODS:
        cls = _method(name)
        assert issubclass(cls, SSLMethod) and cls.method_name == name
        assert cls.SOLO_LEARN_DEFAULTS["source"].startswith("scripts/pretrain/imagenet-100/")
        assert "arxiv.org" in (cls.__doc__ or "")


@pytest.mark.parametrize("name", METHODS)
def test_training_validation_and_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = _model(name)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainer = _trainer(max_epochs=1)
    trainer.fit(
        model,
        _loader(_train_data(model)),
        _loader(_val_data(model)),
    )
    metrics = trainer.callback_metrics
    assert trainer.global_step == 2
    assert math.isfinite(float(metrics["train_loss"]))
    changed = [
        k
        for k, v in model.backbone.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert any(k.endswith("conv1.weight") for k in changed), "the backbone weights did not move"
    assert 0.0 <= float(metrics["val_knn_acc"]) <= 1.0

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = type(model).load_from_checkpoint(path)
    assert restored.hparams == model.hparams
    model.eval()
    restored.eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
    # The same checkpoint feeds create_backbone (weights_only load, "backbone." prefix stripped).
    backbone, _ = create_backbone("resnet18", weights=path)
    backbone.eval()
    with torch.no_grad():
        assert torch.equal(backbone(x), model(x))
    assert torch.load(path, weights_only=True)["histo"]["method"] == name


@pytest.mark.parametrize("name", METHODS)
def test_unlabelled_data_logs_no_knn_accuracy(name: str) -> None:
    model = _model(name)
    trainer = _trainer(max_steps=1, limit_val_batches=1)
    trainer.fit(
        model,
        _loader(_train_data(model, n=BATCH, labelled=False)),
        _loader(_val_data(model, labelled=False)),
    )
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert "val_knn_acc" not in trainer.callback_metrics
    assert model.knn_accuracy() is None


@pytest.mark.parametrize("name", METHODS)
def test_forward_gives_backbone_features(name: str) -> None:
    model = _model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, model.feature_dim) == (2, 512)
    assert model.backbone_name == "resnet18" and model.input_size == SIZE and model.method_name == name


@pytest.mark.parametrize("name", METHODS)
def test_train_transform_gives_the_methods_views(name: str) -> None:
    model = _model(name)
    views = model.train_transform()(tissue_array(80, 80))
    sizes = [tuple(v.shape) for v in views]
    if name == "swav":
        assert sizes == [(3, SIZE, SIZE)] * 2 + [(3, 27, 27)] * 6
    else:
        assert sizes == [(3, SIZE, SIZE)] * 2


def test_solo_learn_defaults_are_the_published_ones() -> None:
    simclr = _method("simclr").SOLO_LEARN_DEFAULTS
    assert (simclr["proj_hidden_dim"], simclr["proj_output_dim"], simclr["temperature"]) == (4096, 512, 0.2)
    assert (simclr["lr"], simclr["weight_decay"], simclr["optimizer"]) == (0.3, 1e-4, "lars")
    nnclr = _method("nnclr").SOLO_LEARN_DEFAULTS
    assert (nnclr["queue_size"], nnclr["pred_hidden_dim"], nnclr["lr"], nnclr["weight_decay"]) == (
        65536,
        4096,
        0.4,
        1e-5,
    )
    barlow = _method("barlow_twins").SOLO_LEARN_DEFAULTS
    assert (barlow["proj_output_dim"], barlow["lamb"], barlow["scale_loss"]) == (2048, 0.0051, 0.1)
    swav = _method("swav").SOLO_LEARN_DEFAULTS
    assert (swav["num_prototypes"], swav["queue_size"], swav["epoch_queue_starts"]) == (3000, 3840, 50)
    assert (swav["sk_iters"], swav["sk_epsilon"], swav["freeze_prototypes_epochs"], swav["lr"]) == (
        3,
        0.05,
        2,
        0.6,
    )


def test_swav_keeps_prototypes_frozen_at_first_and_fills_its_queue() -> None:
    model = cast(SwAV, _model("swav", queue_size=8, freeze_prototypes=1.0))
    prototypes = model.prototypes.heads[0].weight.detach().clone()
    assert model.prototypes.heads[0].bias is None
    _trainer(max_steps=1).fit(model, _loader(_train_data(model, n=BATCH)))
    normalised = nn.functional.normalize(prototypes, dim=1)
    assert torch.allclose(model.prototypes.heads[0].weight, normalised, atol=1e-6)  # only renormalised
    assert int(model.queue_filled) == BATCH and model.queue[:, :BATCH].abs().sum() > 0


def test_swav_queue_and_freezing_scale_with_the_run_length() -> None:
    model = cast(SwAV, _model("swav", queue_size=3840))
    trainer = _trainer(max_steps=3)
    trainer.fit(model, _loader(_train_data(model, n=BATCH)))
    # solo-learn: the queue joins at epoch 50 of 400 (1/8 of the run), so after step 1 of 3 here,
    # and holds no more than the run fills by then (one batch), not 3840 embeddings.
    assert model.total_steps == 3 and model.queue_start_step == 1
    assert model.queue_length(BATCH) == BATCH and int(model.queue_filled) == BATCH
    long_run = cast(SwAV, _model("swav"))
    long_run._trainer = cast(Any, type("T", (), {"estimated_stepping_batches": 8000})())
    assert long_run.queue_start_step == 1000 and long_run.queue_length(32) == 3840
    with pytest.raises(InvalidInputError, match="shares of the run"):
        create_encoder("swav", queue_starts=50)


def test_bad_batches_and_options_raise_clear_errors() -> None:
    model = _model("simclr")
    with pytest.raises(InvalidInputError, match="views"):
        model._split_batch(([torch.zeros(2, 3, SIZE, SIZE)], torch.zeros(2)))
    with pytest.raises(InvalidInputError, match="training batch"):
        model._split_batch(torch.zeros(2, 3, SIZE, SIZE))
    with pytest.raises(InvalidInputError, match="optimizer"):
        create_encoder("simclr", optimizer="adam")
    with pytest.raises(InvalidInputError, match="warmup"):
        create_encoder("simclr", max_epochs=5, warmup_epochs=10)
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_encoder("simclr", backbone="vit_tiny")
    with pytest.raises(UnknownNameError, match="imagenet, random"):
        create_encoder("simclr", init="histology")


def test_learning_rate_scales_with_batch_and_follows_warmup_cosine() -> None:
    model = create_encoder("simclr", batch_size=32, lr=0.3)
    assert model.scaled_lr == pytest.approx(0.3 * 32 / 256)
    assert model.warmup_epochs == 10  # solo-learn's warm-up ...
    assert create_encoder("simclr", max_epochs=10).warmup_epochs == 1.0  # ... capped at a tenth of the run
    assert create_encoder("simclr", max_epochs=10, warmup_epochs=3).warmup_epochs == 3
    schedule = WarmupCosine(warmup_steps=10, total_steps=110, start_factor=0.01)
    assert schedule(0) == pytest.approx(0.01)
    assert schedule(5) == pytest.approx(0.505)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.5)
    assert schedule(110) == pytest.approx(0.0, abs=1e-12)
    assert schedule(500) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("optimizer", ["lars", "sgd", "adamw"])
def test_configure_optimizers_excludes_bias_and_norm_from_weight_decay(optimizer: str) -> None:
    model = _model("simclr", optimizer=optimizer, weight_decay=1e-4)
    trainer = _trainer(max_steps=3)
    trainer.fit(model, _loader(_train_data(model, n=BATCH)))
    opt = trainer.optimizers[0]
    decayed, excluded = opt.param_groups
    assert all(p.ndim > 1 for p in decayed["params"]) and decayed["weight_decay"] == 1e-4
    assert all(p.ndim == 1 for p in excluded["params"]) and excluded["weight_decay"] == 0.0
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decayed["params"]) + len(excluded["params"]) == n_params
    assert isinstance(opt, {"lars": LARS, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[optimizer])


def test_lars_adapts_weights_and_leaves_biases_to_plain_sgd() -> None:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(1.0)
    layer.weight.grad = torch.full_like(layer.weight, 100.0)
    layer.bias.grad = torch.full_like(layer.bias, 100.0)
    opt = LARS(parameter_groups(layer, 0.0), lr=0.1, momentum=0.0, eta=0.02)
    opt.step()
    # weight: trust = eta * |w| / |g| = 0.02 / 100, so the step is 0.02 / 100 * 100 = 0.02
    assert torch.allclose(layer.weight, torch.full_like(layer.weight, 0.98))
    # bias: excluded from adaptation, plain SGD: 1 - 0.1 * 100
    assert torch.allclose(layer.bias, torch.full_like(layer.bias, -9.0))


def test_weighted_knn_follows_solo_learn() -> None:
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_labels = torch.tensor([0, 0, 1, 1])
    test = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert weighted_knn_predict(train, train_labels, test, k=3, t=0.07).tolist() == [0, 1]
    assert weighted_knn_accuracy(train, train_labels, test, torch.tensor([0, 0]), k=3) == 0.5
    # k larger than the bank is clipped; one far neighbour of another class is outvoted by weight
    assert weighted_knn_predict(train[:3], train_labels[:3], test[:1], k=20).tolist() == [0]


# ----------------------------------------------------------------------------- backbones


def test_backbones_are_resnets_and_efficientnet_without_classifier() -> None:
    assert BACKBONES == ("resnet18", "resnet50", "efficientnet_lite0")
    small, dim = create_backbone("resnet18")
    assert dim == 512 and isinstance(small.fc, nn.Identity)
    assert small.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 512)
    large, dim = create_backbone("resnet50")
    assert dim == 2048 and isinstance(large.fc, nn.Identity)
    with pytest.raises(UnknownNameError, match="resnet18, resnet50"):
        create_backbone("resnet101")


@pytest.mark.parametrize("prefix", ["", "backbone.", "encoder.", "module.", "module.backbone."])
@pytest.mark.parametrize("wrapped", [False, True])
def test_backbone_weights_load_with_each_prefix(tmp_path: Path, prefix: str, wrapped: bool) -> None:
    torch.manual_seed(5)
    source, _ = create_backbone("resnet18")
    state: dict[str, torch.Tensor] = {f"{prefix}{k}": v for k, v in source.state_dict().items()}
    state[f"{prefix}fc.weight"] = torch.randn(10, 512)  # a classifier is ignored
    if prefix.endswith(("backbone.", "encoder.")):
        state["projector.0.weight"] = torch.randn(8, 512)  # so are heads beside a prefixed backbone
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": state, "epoch": 3} if wrapped else state, path)
    torch.manual_seed(6)
    loaded, _ = create_backbone("resnet18", weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_backbone_weights_that_do_not_fit_raise(tmp_path: Path) -> None:
    source, _ = create_backbone("resnet18")
    state = source.state_dict()
    missing = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(InvalidInputError, match=r"missing \d+ key\(s\): layer4\."):
        create_backbone("resnet18", weights=tmp_path / "missing.pt")
    torch.save({**state, "head.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    with pytest.raises(InvalidInputError, match=r"unexpected 1 key.*head\.weight"):
        create_backbone("resnet18", weights=tmp_path / "extra.pt")
    large, _ = create_backbone("resnet50")
    torch.save(large.state_dict(), tmp_path / "resnet50.pt")
    with pytest.raises(InvalidInputError, match="resnet18 vs resnet50"):
        create_backbone("resnet18", weights=tmp_path / "resnet50.pt")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "junk.pt")
    with pytest.raises(InvalidInputError, match="state dict"):
        create_backbone("resnet18", weights=tmp_path / "junk.pt")
    with pytest.raises(NotFoundError):
        create_backbone("resnet18", weights=tmp_path / "absent.pt")


def test_backbone_weights_reject_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": Path("x")}, path)
    with pytest.raises(InvalidInputError, match=r"refused to load.*\(it contains pathlib"):
        create_backbone("resnet18", weights=path)


def test_method_starts_from_given_backbone_weights(tmp_path: Path) -> None:
    torch.manual_seed(9)
    source, _ = create_backbone("resnet18")
    path = tmp_path / "init.pt"
    torch.save({f"backbone.{k}": v for k, v in source.state_dict().items()}, path)
    model = create_encoder("simclr", backbone_weights=path, input_size=SIZE)
    assert torch.equal(model.backbone.state_dict()["conv1.weight"], source.state_dict()["conv1.weight"])
    assert "backbone_weights" not in model.hparams  # a checkpoint rebuilds without the file
    assert model.backbone_weights == str(path)


# ----------------------------------------------------------------------------- pretrained start


def test_efficientnet_starts_from_the_shipped_imagenet_weights() -> None:
    imagenet = create_encoder("imagenet").network.eval()
    model = create_encoder("simclr", backbone="efficientnet_lite0", init="imagenet", input_size=SIZE).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), imagenet(x)) and model(x).shape == (2, 1280)
    # its views and embeddings are normalised as its weights expect: (x - 127) / 128
    assert model.mean == pytest.approx((127 / 255,) * 3) and model.std == pytest.approx((128 / 255,) * 3)
    view = model.train_transform()(np.full((72, 72, 3), 127, np.uint8))[0]
    assert view.abs().max() < 0.35  # a mid-grey tile is about zero after their normalisation
    scratch = create_encoder("simclr", backbone="efficientnet_lite0", init="random", input_size=SIZE).eval()
    with torch.no_grad():
        assert not torch.allclose(scratch(x), imagenet(x))


def test_resnet_imagenet_weights_missing_offline_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision import models

    def offline(*_: Any, **__: Any) -> None:
        raise OSError("no network")

    monkeypatch.setattr(type(models.ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(NotFoundError, match=r"--backbone-weights PATH.*efficientnet_lite0"):
        create_backbone("resnet18", init="imagenet")


def test_pretrained_start_gets_the_fine_tuning_recipe_and_scratch_the_solo_learn_one() -> None:
    scratch = create_encoder("swav")
    assert (scratch.optimizer_name, scratch.lr, scratch.weight_decay) == ("lars", 0.6, 1e-6)
    assert scratch.head_lr_scale == 1 and not scratch.freeze_bn
    tuned = create_encoder("swav", backbone="efficientnet_lite0", init="imagenet")
    assert (tuned.optimizer_name, tuned.lr, tuned.weight_decay) == (
        FINETUNE.optimizer,
        FINETUNE.lr,
        FINETUNE.weight_decay,
    )
    assert tuned.head_lr_scale == FINETUNE.head_lr_scale and tuned.freeze_bn == FINETUNE.freeze_bn
    assert create_encoder("simclr", init="imagenet", lr=0.123, backbone="efficientnet_lite0").lr == 0.123


def test_fine_tuning_gives_the_heads_their_own_learning_rate() -> None:
    model = _model("simclr", backbone="efficientnet_lite0", init="imagenet", head_lr_scale=10.0)
    trainer = _trainer(max_steps=1)
    trainer.fit(model, _loader(_train_data(model, n=BATCH)))
    groups = trainer.optimizers[0].param_groups
    backbone = {id(p) for p in model.backbone.parameters()}
    rates = {("backbone" if id(g["params"][0]) in backbone else "head"): g["initial_lr"] for g in groups}
    assert rates["head"] == pytest.approx(10 * rates["backbone"])
    assert rates["backbone"] == pytest.approx(model.scaled_lr)
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_params


def test_frozen_batch_norm_keeps_its_statistics_in_training() -> None:
    model = _model("simclr", backbone="efficientnet_lite0", init="imagenet", freeze_bn=True)
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running_mean" in k}
    _trainer(max_steps=1).fit(model, _loader(_train_data(model, n=BATCH)))
    after = model.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())
    moving = _model("simclr", backbone="efficientnet_lite0", init="imagenet", freeze_bn=False)
    _trainer(max_steps=1).fit(moving, _loader(_train_data(moving, n=BATCH)))
    assert any(not torch.equal(moving.backbone.state_dict()[k], v) for k, v in stats.items())


def test_wise_ft_averages_the_tuned_backbone_with_its_start() -> None:
    model = _model("simclr", backbone="efficientnet_lite0", init="imagenet", wise_alpha=0.5)
    start = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with torch.no_grad():
        for param in model.backbone.parameters():
            param.add_(1.0)
    model.on_fit_end()
    head = "net._conv_head.weight"
    assert torch.allclose(model.backbone.state_dict()[head], start[head] + 0.5, atol=1e-6)
    scratch = _model("simclr", wise_alpha=0.5)  # nothing to average with: random weights are no start
    before = scratch.backbone.conv1.weight.clone()
    scratch.on_fit_end()
    assert torch.equal(scratch.backbone.conv1.weight, before)
    with pytest.raises(InvalidInputError, match="wise_alpha"):
        create_encoder("simclr", wise_alpha=1.5)


def test_fine_tuning_freezes_the_early_stages() -> None:
    model = _model("simclr", backbone="efficientnet_lite0", init="imagenet", freeze_stages=0.75)
    net = cast(Any, model.backbone).net
    assert model.frozen_stages == 13  # stem + 12 of 16 blocks, of 18 stages
    assert not any(p.requires_grad for p in net._blocks[11].parameters())
    assert all(p.requires_grad for p in net._blocks[12].parameters())
    assert all(p.requires_grad for p in model.projection_head.parameters())
    resnet = _model("simclr", freeze_stages=0.5)
    assert resnet.frozen_stages == 2 and not resnet.backbone.layer1[0].conv1.weight.requires_grad
    assert resnet.backbone.layer2[0].conv1.weight.requires_grad
