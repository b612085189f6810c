"""Lightning module: multi-property tensor regression with masked, normalized losses.

Targets arrive in physical irrep units (``Batch.targets[prop]`` (B, dim), ``Batch.masks[prop]``
(B,) bool); the module normalizes them with the per-property
:class:`~irreptensor_ml.data.normalization.IrrepNormalizer` and compares them with the
predictor's outputs (normalized units).  The loss is

    L = sum_p w_p * sum_b mask_pb * l(pred_pb - target_pb) / max(1, sum_b mask_pb)

with ``l`` the mean over the ``dim`` components of the squared error (``mse``) or of the smooth
L1 (Huber) loss.  Every head stays in the autograd graph even when a batch lacks its property
(its term is multiplied by zero), so DDP never sees unused parameters.

The normalizer shift/scale are registered buffers: they are part of the ``state_dict`` and
therefore of every Lightning checkpoint, which is self-contained (hyper-parameters are plain
dicts/str/numbers, so checkpoints load with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import lightning
import torch
from e3nn import o3
from torchmetrics import MeanMetric

from irreptensor_ml.data.normalization import IrrepNormalizer
from irreptensor_ml.model import TensorPredictor

__all__ = ["TensorLightningModule", "masked_loss"]

_MODEL_KEYS = {"trunk", "heads", "pretrained_trunk", "freeze_trunk"}


def masked_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "mse",
    beta: float = 1.0,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean per-sample loss over rows where ``mask`` is True.

    Args:
        pred, target: (B, dim) in normalized units.
        mask: (B,) bool.
        kind: ``"mse"``, ``"smooth_l1"`` or ``"frobenius"``: the Frobenius norm of the error in
            physical units (the irrep basis is orthonormal, so it is the norm of the irrep
            difference times ``scale``) divided by the RMS of ``scale``. It is rotation invariant
            and, being an L1 loss over samples, not dominated by the few huge tensors of
            heavy-tailed data (dielectric constants of ferroelectrics) the way the MSE is.
        beta: transition point of the smooth L1 loss.
        scale: (dim,) normalizer scale per coefficient (needed for ``"frobenius"``).

    Returns a scalar; zero (but still connected to ``pred``) when the mask is all False.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:1]:
        raise ValueError(
            f"masked_loss: shapes pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
            f"mask {tuple(mask.shape)} do not match"
        )
    if kind == "mse":
        per_row = (pred - target).pow(2).mean(dim=-1)
    elif kind == "smooth_l1":
        per_row = torch.nn.functional.smooth_l1_loss(pred, target, reduction="none", beta=beta).mean(dim=-1)
    elif kind == "frobenius":
        if scale is None:
            raise ValueError("masked_loss: kind 'frobenius' needs the normalizer scale")
        rel = scale / scale.pow(2).mean().sqrt()
        # sqrt(. + eps) keeps the gradient finite at a perfect prediction
        per_row = (((pred - target) * rel).pow(2).sum(dim=-1) + 1e-12).sqrt()
    else:
        raise ValueError(f"masked_loss: kind must be 'mse', 'smooth_l1' or 'frobenius', got {kind!r}")
    weight = mask.to(pred.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


class TensorLightningModule(lightning.LightningModule):
    """Trains a :class:`TensorPredictor` on one or more tensor properties.

    Args:
        irreps: ``{property: irreps string}`` (one head per property, e.g. the data module's
            ``irreps``).
        model: ``{"trunk": {...}, "heads": {prop: {"irreps_hidden": ...}}, "pretrained_trunk":
            path or None, "freeze_trunk": bool}``.  With ``pretrained_trunk`` (a ``model.pt``,
            ``.ckpt`` or run directory) the trunk's architecture and weights are taken from that
            model (its ``trunk`` settings replace the given ones; the heads are new), for
            transfer learning; ``freeze_trunk`` then trains only the heads.
        loss: ``{"type": "mse"|"smooth_l1"|"frobenius", "smooth_l1_beta": float, "weights": {prop: float}}``
            (see :func:`masked_loss`).
        optim: ``{"lr", "weight_decay", "scheduler": "cosine"|"plateau"|"none", "warmup_epochs",
            "min_lr", "plateau_factor", "plateau_patience"}``.
        normalizers: ``{prop: IrrepNormalizer or its state_dict()}``; may be omitted when the
            weights (and normalizer buffers) are loaded from a checkpoint afterwards.
        max_epochs: length of the cosine schedule.
        run_config: the full training configuration, stored in the checkpoint's hyper-parameters
            (for provenance and :func:`~irreptensor_ml.train.checkpoint.load_model`).

    Logged metrics: ``train/loss``, ``val/loss`` (monitored by checkpointing / early stopping),
    ``{train,val}/loss_<prop>`` and ``val/mae_<prop>`` (mean absolute error per irrep component
    in physical units).
    """

    def __init__(
        self,
        irreps: Mapping[str, str],
        model: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        normalizers: Mapping[str, IrrepNormalizer | Mapping[str, Any]] | None = None,
        max_epochs: int = 100,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not irreps:
            raise ValueError("TensorLightningModule: irreps must name at least one property")
        model = dict(model or {})
        loss = dict(loss or {})
        optim = dict(optim or {})
        unknown = sorted(set(model) - _MODEL_KEYS)
        if unknown:
            raise ValueError(f"unknown model setting(s) {unknown}; known: {sorted(_MODEL_KEYS)}")
        pretrained = None
        if model.get("pretrained_trunk"):
            # transfer learning: the trunk architecture and weights come from an earlier model
            from irreptensor_ml.train.checkpoint import load_model

            pretrained, _, _ = load_model(model["pretrained_trunk"])
            model["trunk"] = dict(pretrained.trunk.config)
        self.save_hyperparameters(
            {
                "irreps": {p: str(s) for p, s in irreps.items()},
                "model": model,
                "loss": loss,
                "optim": optim,
                "max_epochs": int(max_epochs),
                "run_config": dict(run_config or {}),
            }
        )
        head_settings = dict(model.get("heads") or {})
        unknown = sorted(set(head_settings) - set(irreps))
        if unknown:
            raise ValueError(f"model.heads has settings for {unknown}, which are not trained properties {sorted(irreps)}")
        heads = {
            prop: {"irreps_out": str(s), **dict(head_settings.get(prop) or {})}
            for prop, s in irreps.items()
        }
        self.model = TensorPredictor(trunk=dict(model.get("trunk") or {}), heads=heads)
        if pretrained is not None:
            self.model.trunk.load_state_dict(pretrained.trunk.state_dict())
        if model.get("freeze_trunk"):
            self.model.freeze_trunk()
        self.properties = list(irreps)
        self.loss_type = str(loss.get("type", "mse"))
        self.loss_beta = float(loss.get("smooth_l1_beta", 1.0))
        weights = dict(loss.get("weights") or {})
        unknown = sorted(set(weights) - set(irreps))
        if unknown:
            raise ValueError(f"loss.weights names {unknown}, which are not trained properties {sorted(irreps)}")
        self.loss_weights = {p: float(weights.get(p, 1.0)) for p in self.properties}
        self.optim_config = optim
        self.max_epochs = int(max_epochs)

        # Per-property epoch metrics; updated on every batch (weight 0 when the property is
        # absent) so that all DDP ranks synchronise the same set of metrics.
        self.epoch_metrics = torch.nn.ModuleDict(
            {
                f"{stage}_{kind}_{prop}": MeanMetric()
                for stage in ("train", "val", "test")
                for kind in ("loss", "mae")
                for prop in self.properties
            }
        )

        normalizers = dict(normalizers or {})
        for prop, irreps_str in irreps.items():
            dim = o3.Irreps(irreps_str).dim
            shift = torch.zeros(dim, dtype=torch.float64)
            scale = torch.ones(dim, dtype=torch.float64)
            if prop in normalizers:
                norm = normalizers[prop]
                if not isinstance(norm, IrrepNormalizer):
                    norm = IrrepNormalizer.from_state_dict(dict(norm))
                if o3.Irreps(norm.irreps) != o3.Irreps(irreps_str):
                    raise ValueError(
                        f"normalizer of {prop!r} has irreps {norm.irreps}, expected {irreps_str}"
                    )
                shift, scale = norm.shift.to(torch.float64), norm.scale.to(torch.float64)
            self.register_buffer(f"norm_shift_{prop}", shift.clone())
            self.register_buffer(f"norm_scale_{prop}", scale.clone())

    # ------------------------------------------------------------------ normalizers
    def normalizer(self, prop: str) -> IrrepNormalizer:
        """The :class:`IrrepNormalizer` of ``prop`` rebuilt from the module's buffers (on CPU)."""
        return IrrepNormalizer.from_state_dict(
            {
                "irreps": self.hparams["irreps"][prop],
                "shift": getattr(self, f"norm_shift_{prop}").detach().cpu(),
                "scale": getattr(self, f"norm_scale_{prop}").detach().cpu(),
            }
        )

    @property
    def normalizers(self) -> dict[str, IrrepNormalizer]:
        return {p: self.normalizer(p) for p in self.properties}

    def _normalize(self, prop: str, x: torch.Tensor) -> torch.Tensor:
        shift = getattr(self, f"norm_shift_{prop}").to(x.dtype)
        scale = getattr(self, f"norm_scale_{prop}").to(x.dtype)
        return (x - shift) / scale

    def _denormalize(self, prop: str, y: torch.Tensor) -> torch.Tensor:
        shift = getattr(self, f"norm_shift_{prop}").to(y.dtype)
        scale = getattr(self, f"norm_scale_{prop}").to(y.dtype)
        return y * scale + shift

    # ------------------------------------------------------------------ steps
    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """Normalized predictions ``{prop: (B, dim)}``."""
        return self.model(batch)

    def predict_physical(self, batch: Any) -> dict[str, torch.Tensor]:
        """Predictions in physical irrep units (denormalized)."""
        return {p: self._denormalize(p, y) for p, y in self.model(batch).items()}

    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        pred = self.model(batch)
        total = None
        bs = int(batch.num_graphs)
        for prop in self.properties:
            if prop not in batch.targets:
                raise ValueError(f"batch has no targets for trained property {prop!r}")
            mask = batch.masks[prop]
            target = self._normalize(prop, batch.targets[prop].to(pred[prop].dtype))
            scale = getattr(self, f"norm_scale_{prop}").to(pred[prop].dtype)
            term = masked_loss(pred[prop], target, mask, self.loss_type, self.loss_beta, scale)
            total = self.loss_weights[prop] * term if total is None else total + self.loss_weights[prop] * term
            n = mask.sum()
            values = {"loss": term.detach()}
            if stage != "train":
                values["mae"] = self._mae(prop, pred[prop], batch, mask)
            for kind, value in values.items():
                metric = self.epoch_metrics[f"{stage}_{kind}_{prop}"]
                metric.update(value, weight=n.to(value.dtype))
                self.log(f"{stage}/{kind}_{prop}", metric, on_step=False, on_epoch=True)
        self.log(f"{stage}/loss", total.detach(), batch_size=bs, on_step=stage == "train",
                 on_epoch=True, prog_bar=True, sync_dist=stage != "train")
        return total

    def _mae(self, prop: str, pred: torch.Tensor, batch: Any, mask: torch.Tensor) -> torch.Tensor:
        """Mean |error| per irrep component in physical units over the masked rows (0 if none)."""
        with torch.no_grad():
            err = (self._denormalize(prop, pred) - batch.targets[prop].to(pred.dtype)).abs().mean(dim=-1)
            weight = mask.to(pred.dtype)
            return (err * weight).sum() / weight.sum().clamp(min=1.0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return self.predict_physical(batch)

    # ------------------------------------------------------------------ optimisation
    @property
    def monitor(self) -> str:
        """Validation metric that selects the best epoch (checkpointing, early stopping,
        plateau schedule): ``"val/loss"``, the weighted sum over properties."""
        return "val/loss"

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups (override for per-group learning rates): by default one group
        with every parameter that requires grad (a frozen trunk is left out)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters (trunk frozen and no heads?)")
        return [{"params": params}]

    def configure_optimizers(self) -> Any:
        """AdamW over :meth:`param_groups` with the ``optim.scheduler`` schedule (per epoch):
        ``cosine`` (linear warm-up over ``warmup_epochs``, then cosine decay to ``min_lr`` at
        ``max_epochs``), ``plateau`` (ReduceLROnPlateau on :attr:`monitor`) or ``none``."""
        cfg = self.optim_config
        lr = float(cfg.get("lr", 3e-3))
        optimizer = torch.optim.AdamW(
            self.param_groups(), lr=lr, weight_decay=float(cfg.get("weight_decay", 0.0))
        )
        scheduler = cfg.get("scheduler", "cosine")
        if scheduler == "none":
            return optimizer
        if scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                factor=float(cfg.get("plateau_factor", 0.5)),
                patience=int(cfg.get("plateau_patience", 10)),
                min_lr=float(cfg.get("min_lr", 0.0)),
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": sched, "monitor": self.monitor, "interval": "epoch"},
            }
        if scheduler == "cosine":
            warmup = int(cfg.get("warmup_epochs", 0))
            total = max(1, self.max_epochs)
            min_ratio = float(cfg.get("min_lr", 0.0)) / lr

            def factor(epoch: int) -> float:
                if epoch < warmup:
                    return (epoch + 1) / (warmup + 1)
                progress = min(1.0, (epoch - warmup) / max(1, total - warmup))
                return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

            sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        raise ValueError(f"optim.scheduler must be 'cosine', 'plateau' or 'none', got {scheduler!r}")
