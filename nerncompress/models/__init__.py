"""Model architectures and the registry that maps names and checkpoints to them.

Importing this package registers ``cifar_resnet``, ``digits_cnn`` and the family of auto-detected
``torchvision:<name>`` models (every torchvision classification model, see ``torchvision_models.py``).
"""

from . import cifar_resnet as _cifar_resnet  # noqa: F401  (registers "cifar_resnet")
from . import small_cnn as _small_cnn  # noqa: F401  (registers "digits_cnn")
from . import torchvision_models as _torchvision_models  # noqa: F401  (registers "torchvision:*")
from .registry import (
    ArchSpec,
    build_model,
    build_on_meta,
    check_arch,
    detect_arch,
    get_arch,
    list_archs,
    matches_shapes,
    register_arch,
    register_family,
    resolve_arch,
)

__all__ = [
    "ArchSpec",
    "build_model",
    "build_on_meta",
    "check_arch",
    "detect_arch",
    "get_arch",
    "list_archs",
    "matches_shapes",
    "register_arch",
    "register_family",
    "resolve_arch",
]
