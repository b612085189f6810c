"""The one trainer builder (``irreptensor_ml.train.trainer``), model selection with Lightning's
``ModelCheckpoint`` in the transfer runs, ``Trainer.predict`` passes, and the trunk transfer."""

from __future__ import annotations

import math
import types

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from irreptensor_ml.model import TensorPredictor, transfer_trunk, trunk_state
from irreptensor_ml.train import build_trainer, load_config
from irreptensor_ml.train.trainer import MonitorHistory, predict_batches

TRUNK = {
    "embedding_dim": 4, "irreps_hidden": "4x0e+2x1o+2x2e", "num_layers": 1, "lmax_sh": 2,
    "num_basis": 4, "radial_hidden": [4], "avg_num_neighbors": 2.0, "cutoff": 4.0,
}


def _early_stopping(trainer: lightning.Trainer) -> EarlyStopping:
    return next(c for c in trainer.callbacks if isinstance(c, EarlyStopping))


def test_build_trainer_defaults_are_the_resumable_logged_run(tmp_path):
    cfg = load_config("tiny")
    trainer = build_trainer(cfg, tmp_path)
    ckpt = trainer.checkpoint_callback
    assert ckpt.dirpath == str(tmp_path / "checkpoints") and ckpt.monitor == "val/loss"
    assert ckpt.save_last and not ckpt.save_weights_only and ckpt.save_top_k == 1 and ckpt.mode == "min"
    assert isinstance(trainer.logger, CSVLogger)
    assert any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks)
    assert trainer.max_epochs == cfg["trainer"]["max_epochs"]
    assert _early_stopping(trainer).patience == cfg["trainer"]["early_stopping_patience"]
    assert trainer.progress_bar_callback is None  # tiny: enable_progress_bar false
    assert trainer.num_sanity_val_steps == 2  # Lightning's default


def test_build_trainer_options(tmp_path):
    cfg = load_config("tiny")
    history = MonitorHistory("val/loss_dielectric")
    trainer = build_trainer(
        cfg, tmp_path, "val/loss_dielectric", max_epochs=7, patience=3, logging=False, resumable=False,
        progress_bar=True, callbacks=[history], num_sanity_val_steps=0, enable_model_summary=False,
    )
    ckpt = trainer.checkpoint_callback
    assert ckpt.monitor == "val/loss_dielectric" and not ckpt.save_last and ckpt.save_weights_only
    assert trainer.logger is None
    assert not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks)
    assert trainer.max_epochs == 7
    es = _early_stopping(trainer)
    assert es.patience == 3 and es.monitor == "val/loss_dielectric"
    assert history in trainer.callbacks
    assert trainer.progress_bar_callback is not None
    assert trainer.num_sanity_val_steps == 0
    # the runner's one-device setting wins over the config's
    cfg["trainer"].update(devices=2, strategy="ddp")
    one = build_trainer(cfg, tmp_path / "one", logging=False, devices=1, num_nodes=1, strategy="auto")
    assert one.num_devices == 1


class _Scripted(lightning.LightningModule):
    """Trains a 1x1 linear layer; its validation loss of epoch ``k`` is ``values[k]``."""

    monitor = "val/loss"

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.values = values
        self.weights: dict[int, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.tensor(self.values[self.current_epoch]))

    def on_validation_epoch_end(self) -> None:
        self.weights[self.current_epoch] = self.layer.weight.detach().clone()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _best_state_rule(history: list[float]) -> int:
    """The selection of the former ``BestState``: the first epoch of lowest finite value, or -1."""
    best, epoch = math.inf, -1
    for k, v in enumerate(history):
        if math.isfinite(v) and v < best:
            best, epoch = v, k
    return epoch


@pytest.mark.parametrize("values, patience", [
    ([5.0, 4.0, 4.5, 3.9, 6.0, 7.0], 2),  # best in the middle, early stop after it
    ([5.0, 4.0, 4.0, 4.0], 5),            # ties keep the first
    ([5.0, math.nan, 1.0], 5),            # NaN stops the training, never the best
    ([2.0, math.inf, 1.0], 5),
])
def test_transfer_run_keeps_the_best_finite_epoch(tmp_path, values, patience):
    from irreptensor_ml.transfer import runner

    torch.manual_seed(0)
    module = _Scripted(values)
    data = torch.ones(4, 1)
    cfg = {"trainer": {"max_epochs": len(values), "early_stopping_patience": patience, "accelerator": "cpu"}}
    spec = types.SimpleNamespace(run_id="scripted")
    best_epoch, best_val, history, epochs_run = runner._train(
        spec, module, cfg, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2),
        len(values), patience, tmp_path,
    )
    expected = [float(torch.tensor(v)) for v in values[:len(history)]]
    assert [v if math.isfinite(v) else str(v) for v in history] == [
        v if math.isfinite(v) else str(v) for v in expected]
    assert best_epoch == _best_state_rule(history)
    assert best_val == history[best_epoch]
    assert epochs_run == len(history)
    assert torch.equal(module.layer.weight, module.weights[best_epoch])  # the best epoch's weights
    assert list(tmp_path.iterdir()) == []  # the checkpoint folder is gone


@pytest.mark.parametrize("first", [math.nan, math.inf])
def test_transfer_run_without_a_finite_epoch_fails(tmp_path, first):
    from irreptensor_ml.transfer import runner

    module = _Scripted([first, 1.0, 0.5])
    data = torch.ones(2, 1)
    cfg = {"trainer": {"max_epochs": 3, "early_stopping_patience": 5, "accelerator": "cpu"}}
    with pytest.raises(ValueError, match="run scripted: no finite validation loss in 1 epochs"):
        runner._train(types.SimpleNamespace(run_id="scripted"), module, cfg, DataLoader(data),
                      DataLoader(data), 3, 5, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_predict_batches_runs_trainer_predict_on_plain_lists_and_loaders():
    model = torch.nn.Linear(2, 1)
    model.train()
    batches = [torch.ones(3, 2), torch.zeros(1, 2), torch.full((2, 2), 2.0)]
    seen_grad = []

    def step(net, batch):
        seen_grad.append(torch.is_grad_enabled() or net.training)
        return net(batch)

    out = predict_batches(model, batches, step)
    assert len(out) == 3 and [o.shape for o in out] == [(3, 1), (1, 1), (2, 1)]
    with torch.no_grad():
        assert all(torch.equal(o, model(b)) for o, b in zip(out, batches))
    assert not any(seen_grad) and not any(o.requires_grad for o in out)
    assert model.training  # the caller's mode is restored
    loader = DataLoader(torch.arange(6.0).reshape(3, 2), batch_size=2)
    assert [o.shape[0] for o in predict_batches(model, loader, step)] == [2, 1]
    assert predict_batches(model.eval(), [], step) == [] and not model.training


def test_transfer_trunk_copies_checked_weights():
    torch.manual_seed(0)
    source = TensorPredictor(TRUNK, {"dielectric": None})
    state = trunk_state(source)
    assert state.keys() == source.trunk.state_dict().keys()
    assert trunk_state(source.state_dict()).keys() == state.keys()  # from a model.pt's state_dict
    assert trunk_state(source.trunk).keys() == state.keys()
    with pytest.raises(ValueError, match="no 'trunk.\\*' entries"):
        trunk_state({"heads.x": torch.zeros(1)})
    for given in (source, state):
        target = TensorPredictor(TRUNK, {"dielectric": None})
        heads = {k: v.clone() for k, v in target.heads.state_dict().items()}
        transfer_trunk(target, given)
        assert all(torch.equal(v, state[k]) for k, v in target.trunk.state_dict().items())
        assert all(torch.equal(v, heads[k]) for k, v in target.heads.state_dict().items())  # heads untouched
    other = TensorPredictor({**TRUNK, "irreps_hidden": "4x0e+1x1o+2x2e"}, {"dielectric": None})
    before = {k: v.clone() for k, v in other.trunk.state_dict().items()}
    with pytest.raises(ValueError, match="source model does not match the trunk architecture"):
        transfer_trunk(other, source, what="source model")
    assert all(torch.equal(v, before[k]) for k, v in other.trunk.state_dict().items())  # nothing copied
    with pytest.raises(ValueError, match=r"missing \['.*'\], unexpected \[\]"):
        transfer_trunk(TensorPredictor(TRUNK, {"dielectric": None}), dict(list(state.items())[1:]))
