"""nextscale: scale-wise autoregressive image generation, VAR and FlowAR on one backbone."""
__version__ = "0.2.0"

from .backbone import Backbone, BackboneConfig, KVCache  # noqa: E402
from .data import ImageData, load_dataset, load_digits  # noqa: E402
from .scales import validate_schedule  # noqa: E402
from .train import TrainConfig, train  # noqa: E402

__all__ = ["Backbone", "BackboneConfig", "KVCache", "ImageData", "load_dataset", "load_digits",
           "validate_schedule", "TrainConfig", "train", "__version__"]
