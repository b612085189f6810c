"""Lightning module: multi-property tensor regression with masked losses.

Targets arrive in physical irrep units (``Batch.targets[prop]`` (B, dim), ``Batch.masks[prop]``
(B,) bool).  The predictor returns, per property, the head's normalized latent output and the
physical irreps its :class:`~irreptensor_ml.model.outputs.OutputMap` makes of it (the
normalization and the output transform live in the model).  The loss is

    L = sum_p w_p * sum_b mask_pb * l_p(b) / max(1, sum_b mask_pb)

with ``l_p`` selected per property by ``loss.type`` (a name, or ``{property: name}``):

``frobenius``  ||pred - true||_F / s_p in physical units (s_p: RMS scale of the training targets);
``relative``   ||pred - true||_F / max(||true||_F, floor_p) (the quantity behind EwT; floors of
               :data:`irreptensor_ml.metrics.RELATIVE_ERROR_FLOORS`);
``relative_sign_free``  min(||pred - true||_F, ||pred + true||_F) / max(||true||_F, floor_p): for
               odd-parity tensors (piezoelectric) whose labels may carry the wrong overall sign
               (a polar axis flipped against the structure; used by the label audit);
``log``        ||L_pred - L_true||_F of the latent matrix logarithm (output transform ``exp`` only:
               log(eps - I) for the dielectric tensor, log C in Mandel form for the elastic one);
``mse``, ``smooth_l1``  per-component losses in normalized latent units.

Every head stays in the autograd graph even when a batch lacks its property (its term is
multiplied by zero), so DDP never sees unused parameters.  The output maps' buffers are part of
the ``state_dict``, hence of every Lightning checkpoint, which is self-contained
(hyper-parameters are plain dicts/str/numbers: checkpoints load with ``weights_only=True``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import lightning
import torch
from e3nn import o3
from torchmetrics import MeanMetric

from irreptensor_ml.data.normalization import IrrepNormalizer
from irreptensor_ml.metrics import RELATIVE_ERROR_FLOORS
from irreptensor_ml.model import TensorPredictor, transfer_trunk

__all__ = ["TensorLightningModule", "masked_loss"]

_MODEL_KEYS = {"trunk", "heads", "outputs", "pretrained_trunk", "freeze_trunk"}


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norms of the rows of ``x`` (B, dim). Rows whose squares overflow to inf (entries beyond
    ~1e154 in float64) or fall into subnormal numbers (below ~1e-154), where they lose their bits, are
    computed on ``x / max|x|``; every other row is ``x.norm()`` to the bit."""
    n = x.norm(dim=-1)
    m = x.abs().amax(dim=-1)
    fi = torch.finfo(x.dtype)
    off = ~torch.isfinite(n) | ((m > 0) & (m * m < fi.tiny / fi.eps))
    ms = torch.where(m > 0, m, torch.ones_like(m))
    return torch.where(off, (x / ms.unsqueeze(-1)).norm(dim=-1) * ms, n)  # no host sync on a GPU


def masked_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "mse",
    beta: float = 1.0,
    scale: torch.Tensor | None = None,
    floor: float | None = None,
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
            ``"relative"``: the Frobenius norm of ``pred - target`` over ``max(||target||, floor)``
            (``pred``, ``target`` in physical units: the per-material relative error of EwT);
            ``"relative_sign_free"``: the same with the better of ``target`` and ``-target``.
            ``"log"``: like ``"frobenius"``, applied to latent (log-space) coordinates.
        beta: transition point of the smooth L1 loss.
        scale: (dim,) normalizer scale per coefficient (needed for ``"frobenius"`` and ``"log"``).
        floor: denominator floor of ``"relative"`` (needed for it).

    Returns a scalar; zero (but still connected to ``pred``) when the mask is all False.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:1]:
        raise ValueError(
            f"masked_loss: shapes pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
            f"mask {tuple(mask.shape)} do not match"
        )
    # select the rows rather than weighting them by 0: a masked-out placeholder (NaN target, or a
    # prediction whose square overflows) must not turn the loss or its gradient into NaN
    n = mask.sum()
    pred, target = pred[mask], target[mask]
    if kind == "mse":
        per_row = (pred - target).pow(2).mean(dim=-1)
    elif kind == "smooth_l1":
        per_row = torch.nn.functional.smooth_l1_loss(pred, target, reduction="none", beta=beta).mean(dim=-1)
    elif kind in ("frobenius", "log"):
        if scale is None:
            raise ValueError(f"masked_loss: kind {kind!r} needs the normalizer scale")
        rel = scale / scale.pow(2).mean().sqrt()
        # sqrt(. + eps) keeps the gradient finite at a perfect prediction
        per_row = (((pred - target) * rel).pow(2).sum(dim=-1) + 1e-12).sqrt()
    elif kind in ("relative", "relative_sign_free"):
        if floor is None or not floor > 0:
            raise ValueError(f"masked_loss: kind {kind!r} needs a floor > 0")
        err = ((pred - target).pow(2).sum(dim=-1) + 1e-12).sqrt()
        if kind == "relative_sign_free":
            err = torch.minimum(err, ((pred + target).pow(2).sum(dim=-1) + 1e-12).sqrt())
        per_row = err / _row_norms(target.detach()).clamp(min=float(floor))
    else:
        raise ValueError(
            "masked_loss: kind must be 'mse', 'smooth_l1', 'frobenius', 'relative', 'relative_sign_free' "
            f"or 'log', got {kind!r}"
        )
    return per_row.sum() / n.clamp(min=1).to(per_row.dtype)


class TensorLightningModule(lightning.LightningModule):
    """Trains a :class:`TensorPredictor` on one or more tensor properties.

    Args:
        irreps: ``{property: irreps string}`` (one head per property, e.g. the data module's
            ``irreps``).
        model: ``{"trunk": {...}, "heads": {prop: {"irreps_hidden": ...}}, "pretrained_trunk":
            path or None, "freeze_trunk": bool}``.  ``freeze_trunk`` trains only the heads.
            ``pretrained_trunk`` is only recorded here (the module reads no file): the training
            driver (:func:`~irreptensor_ml.train.fit.fit`) resolves it, puts the pretrained
            trunk's settings into ``trunk`` and passes its weights as ``trunk_state``, so a
            checkpoint restores without the pretrained file.
            ``outputs: {prop: "linear"|"exp"}`` selects each head's output transform
            (:class:`~irreptensor_ml.model.outputs.OutputMap`; default ``linear``).
        loss: ``{"type": name or {prop: name}, "smooth_l1_beta": float, "weights": {prop: float}}``
            with names ``frobenius``, ``relative``, ``relative_sign_free``, ``log``, ``mse``,
            ``smooth_l1`` (module doc).
        optim: ``{"lr", "weight_decay", "scheduler": "cosine"|"plateau"|"none", "warmup_epochs",
            "min_lr", "plateau_factor", "plateau_patience"}``.
        normalizers: ``{prop: IrrepNormalizer or its state_dict()}`` of the physical targets:
            sets a ``linear`` output map when ``train_targets`` lacks the property.
        train_targets: ``{prop: (n, dim) physical training targets}``: fit every output map
            (needed for ``exp``); a head with parts (``model.heads.<prop>.parts: true``) also needs
            ``{"<prop>_<part>": (n, dim)}`` of the same rows.  Both may be omitted when the weights (and output buffers) are
            loaded from a checkpoint afterwards.
        max_epochs: length of the cosine schedule.
        run_config: the full training configuration, stored in the checkpoint's hyper-parameters
            (for provenance and :func:`~irreptensor_ml.train.checkpoint.load_model`).
        trunk_state: trunk weights to start from, for transfer learning (not a hyper-parameter):
            a trained predictor or trunk module, or a trunk state dict, copied with
            :func:`~irreptensor_ml.model.transfer_trunk` (``model.trunk`` must describe its
            architecture).

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
        train_targets: Mapping[str, torch.Tensor] | None = None,
        trunk_state: torch.nn.Module | Mapping[str, torch.Tensor] | None = None,
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
        outputs = dict(model.get("outputs") or {})
        unknown = sorted(set(outputs) - set(irreps))
        if unknown:
            raise ValueError(f"model.outputs names {unknown}, which are not trained properties {sorted(irreps)}")
        heads = {
            prop: {"irreps_out": str(s), **dict(head_settings.get(prop) or {})}
            for prop, s in irreps.items()
        }
        for prop, transform in outputs.items():
            heads[prop]["output"] = str(transform)
        self.model = TensorPredictor(trunk=dict(model.get("trunk") or {}), heads=heads)
        if trunk_state is not None:
            transfer_trunk(self.model, trunk_state)
        if model.get("freeze_trunk"):
            self.model.freeze_trunk()
        self.properties = list(irreps)
        loss_type = loss.get("type", "mse")
        types = dict(loss_type) if isinstance(loss_type, Mapping) else {p: loss_type for p in irreps}
        unknown = sorted(set(types) - set(irreps))
        if unknown:
            raise ValueError(f"loss.type names {unknown}, which are not trained properties {sorted(irreps)}")
        self.loss_types = {p: str(types.get(p, "mse")) for p in self.properties}
        for prop, kind in self.loss_types.items():
            if kind == "log" and self.model.outputs[prop].transform == "linear":
                raise ValueError(
                    f"loss.type 'log' of {prop!r} needs an output transform with a log space "
                    f"(model.outputs.{prop}: exp)"
                )
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
        train_targets = dict(train_targets or {})
        for prop, irreps_str in irreps.items():
            out_map = self.model.outputs[prop]
            if prop in train_targets:
                parts = None
                if out_map.parts:
                    keys = {p: f"{prop}_{p}" for p in out_map.parts}
                    missing = [k for k in keys.values() if k not in train_targets]
                    if missing:
                        raise ValueError(f"head {prop!r} predicts parts: train_targets lacks {missing}")
                    parts = {p: train_targets[k] for p, k in keys.items()}
                out_map.fit(train_targets[prop], parts)
            elif prop in normalizers:
                norm = normalizers[prop]
                if not isinstance(norm, IrrepNormalizer):
                    norm = IrrepNormalizer.from_state_dict(dict(norm))
                if o3.Irreps(norm.irreps) != o3.Irreps(irreps_str):
                    raise ValueError(
                        f"normalizer of {prop!r} has irreps {norm.irreps}, expected {irreps_str}"
                    )
                if out_map.transform != "linear":
                    raise ValueError(
                        f"output transform {out_map.transform!r} of {prop!r} is fitted on training "
                        "targets (train_targets), not on a physical normalizer"
                    )
                out_map.load_normalizer(norm.state_dict())

    # ------------------------------------------------------------------ normalizers
    def normalizer(self, prop: str) -> IrrepNormalizer:
        """The latent :class:`IrrepNormalizer` of ``prop`` (a copy of its output map's buffers;
        for a ``linear`` output, the normalizer of the physical targets)."""
        return self.model.outputs[prop].normalizer()

    @property
    def normalizers(self) -> dict[str, IrrepNormalizer]:
        return {p: self.normalizer(p) for p in self.properties}

    # ------------------------------------------------------------------ steps
    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """Predictions in physical irrep units ``{prop: (B, dim)}``."""
        return self.model(batch)

    def predict_physical(self, batch: Any) -> dict[str, torch.Tensor]:
        """Predictions in physical irrep units (same as :meth:`forward`)."""
        return self.model(batch)

    def _loss_term(self, prop: str, latent: torch.Tensor, phys: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """Masked loss of ``prop`` (see the module doc).  A head with parts adds the loss of every
        part to that of the total (``log``, ``mse``, ``smooth_l1``: one loss over all latent
        blocks, on the rows that have every part)."""
        kind = self.loss_types[prop]
        out_map = self.model.outputs[prop]
        mask = batch.masks[prop]
        keys = [prop] + [f"{prop}_{p}" for p in out_map.parts]
        missing = [k for k in keys if k not in batch.targets]
        if missing:
            raise ValueError(f"batch has no targets for {missing} (head {prop!r} predicts them)")
        if kind in ("frobenius", "relative", "relative_sign_free"):
            ref = out_map.ref_scale.to(phys[prop].dtype)
            floor = RELATIVE_ERROR_FLOORS.get(prop, float(ref))
            total = None
            for key in keys:
                pred, target, m = phys[key], batch.targets[key].to(phys[key].dtype), batch.masks[key]
                if kind == "frobenius":
                    term = masked_loss(pred / ref, target / ref, m, kind, scale=torch.ones_like(pred[0]))
                else:
                    term = masked_loss(pred, target, m, kind, floor=floor)
                total = term if total is None else total + term
            return total
        target = batch.targets[prop].to(latent.dtype)
        for key in keys[1:]:
            mask = mask & batch.masks[key]
        if mask.any():
            parts = {p: batch.targets[f"{prop}_{p}"][mask] for p in out_map.parts} or None
            lat_target = torch.zeros_like(latent)
            lat_target[mask] = out_map.latent_target(target[mask], latent.dtype, parts)
        else:
            lat_target = latent.detach()
        scale = out_map.scale.to(latent.dtype)
        return masked_loss(latent, lat_target, mask, kind, self.loss_beta, scale)

    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        latent, phys = self.model.forward_latent(batch)
        total = None
        bs = int(batch.num_graphs)
        for prop in self.properties:
            if prop not in batch.targets:
                raise ValueError(f"batch has no targets for trained property {prop!r}")
            mask = batch.masks[prop]
            term = self._loss_term(prop, latent[prop], phys, batch)
            total = self.loss_weights[prop] * term if total is None else total + self.loss_weights[prop] * term
            n = mask.sum()
            values = {"loss": term.detach()}
            if stage != "train":
                values["mae"] = self._mae(prop, phys[prop], batch, mask)
            for kind, value in values.items():
                metric = self.epoch_metrics[f"{stage}_{kind}_{prop}"]
                metric.update(value, weight=n.to(value.dtype))
                self.log(f"{stage}/{kind}_{prop}", metric, on_step=False, on_epoch=True)
        self.log(f"{stage}/loss", total.detach(), batch_size=bs, on_step=stage == "train",
                 on_epoch=True, prog_bar=True, sync_dist=stage != "train")
        return total

    def _mae(self, prop: str, phys: torch.Tensor, batch: Any, mask: torch.Tensor) -> torch.Tensor:
        """Mean |error| per irrep component in physical units over the masked rows (0 if none)."""
        with torch.no_grad():
            err = (phys - batch.targets[prop].to(phys.dtype)).abs().mean(dim=-1)
            weight = mask.to(phys.dtype)
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
