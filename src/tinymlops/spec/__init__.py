"""The contract between control plane and devices: versioned data types, standard library only."""

from tinymlops.spec.context import NETWORKS, PREFERENCES, DeviceContext
from tinymlops.spec.model_info import FORMATS, ModelInfo, TensorSpec
from tinymlops.spec.pipeline import PipelineSpec, StageSpec
from tinymlops.spec.profile import BACKENDS, DEVICE_CLASSES, DTYPES, ORT_OPERATOR_TABLES, DeviceProfile
from tinymlops.spec.recipe import RecipeSpec

__all__ = [
    "BACKENDS",
    "DEVICE_CLASSES",
    "DTYPES",
    "FORMATS",
    "NETWORKS",
    "ORT_OPERATOR_TABLES",
    "PREFERENCES",
    "DeviceContext",
    "DeviceProfile",
    "ModelInfo",
    "PipelineSpec",
    "RecipeSpec",
    "StageSpec",
    "TensorSpec",
]
