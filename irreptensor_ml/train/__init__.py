"""Training: configuration (:mod:`.config`), Lightning module (:mod:`.module`), training driver
(:mod:`.fit`), weights-only model files (:mod:`.checkpoint`) and run provenance
(:mod:`.provenance`).  ``python -m irreptensor_ml.train CONFIG RUN_DIR [key=value ...]`` trains
from the command line (needed for multi-process DDP, which re-runs the command per process)."""

from irreptensor_ml.train.checkpoint import load_model, save_model
from irreptensor_ml.train.config import default_config, load_config
from irreptensor_ml.train.fit import build_trainer, fit
from irreptensor_ml.train.module import TensorLightningModule, masked_loss

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
