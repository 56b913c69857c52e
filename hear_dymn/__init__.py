"""hear_dymn: Dynamic MobileNets (DyMN) and EfficientAT MobileNets as pre-trained audio models, with a HEAR 2021
module and a benchmark harness.

HEAR 2021 API: ``load_model``, ``get_scene_embeddings``, ``get_timestamp_embeddings``.
Models: ``create_model``, ``list_models``, ``list_pretrained``. Frontend: ``MelFrontend``.
"""
from .threads import prepare_environment

prepare_environment()  # before torch is imported: OpenMP reads its wait policy once (see hear_dymn/threads.py)

from .frontend import MelConfig, MelFrontend  # noqa: E402
from .hear import EmbeddingConfig, HearModel, get_scene_embeddings, get_timestamp_embeddings, load_model  # noqa: E402
from .models import CheckpointError, WeightsUnavailableError, create_model, list_models, list_pretrained  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "EmbeddingConfig", "HearModel", "MelConfig", "MelFrontend", "WeightsUnavailableError",
    "create_model", "get_scene_embeddings", "get_timestamp_embeddings", "list_models", "list_pretrained", "load_model",
    "__version__",
]
