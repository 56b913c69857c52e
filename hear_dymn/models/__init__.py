"""Architectures (imported for their @register_model side effect), registry and released weights."""
from . import dymn, mn  # noqa: F401  (registers the builders)
from .base import NUM_FEATURE_MAPS, AudioMobileNet
from .dymn import DyMN
from .mn import MN
from .registry import create_model, list_models, model_entry
from .weights import (PRETRAINED, CheckpointError, PretrainedCfg, WeightsUnavailableError, get_pretrained_cfg,
                      list_pretrained)

__all__ = [
    "NUM_FEATURE_MAPS", "AudioMobileNet", "DyMN", "MN", "create_model", "list_models", "model_entry", "PRETRAINED",
    "CheckpointError", "PretrainedCfg", "WeightsUnavailableError", "get_pretrained_cfg", "list_pretrained",
]
