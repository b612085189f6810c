"""Training: configuration (:mod:`.config`), Lightning module (:mod:`.module`), the one Lightning
trainer builder (:mod:`.trainer`, also used by the transfer study), training driver (:mod:`.fit`),
weights-only model files (:mod:`.checkpoint`) and run provenance (:mod:`.provenance`).
``python -m irreptensor_ml.train CONFIG RUN_DIR [key=value ...]`` trains from the command line
(needed for multi-process DDP, which re-runs the command per process)."""

from irreptensor_ml.train.checkpoint import load_model, save_model
from irreptensor_ml.train.config import default_config, load_config
from irreptensor_ml.train.fit import fit
from irreptensor_ml.train.module import TensorLightningModule, masked_loss
from irreptensor_ml.train.trainer import build_trainer

__all__ = [
    "TensorLightningModule",
    "build_trainer",
    "default_config",
    "fit",
    "load_config",
    "load_model",
    "masked_loss",
    "save_model",
]
