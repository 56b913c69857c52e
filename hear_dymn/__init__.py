"""hear_dymn: Dynamic MobileNets (DyMN) and EfficientAT MobileNets as pre-trained audio models, with a HEAR 2021
module and a benchmark harness."""
from .frontend import MelConfig, MelFrontend
from .models import CheckpointError, create_model, list_models, list_pretrained

__version__ = "0.1.0"

__all__ = [
    "MelConfig", "MelFrontend", "CheckpointError", "create_model", "list_models", "list_pretrained", "__version__",
]
