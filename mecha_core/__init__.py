"""mecha: a memory-efficient, general-purpose model merger built from plugins.

Build a recipe, then merge it::

    import mecha_core as mecha
    recipe = mecha.weighted_sum("a.safetensors", "b.safetensors", alpha=0.3)
    mecha.merge(recipe, "out.safetensors")

Every registered merge method is an attribute of this package (and of ``mecha_core.methods``).

``__all__`` is the whole API, for scripts and plugins alike: a plugin imports from ``mecha_core``
the names listed there (modules among them: ``dtypes``, ``keyspecs``, ``random_models``,
``methods``) and the test kit ``mecha_core.testing``, nothing else (a test keeps it so).
"""

from __future__ import annotations

import warnings
from typing import Any

from . import dtypes, keyspecs, methods, random_models
from .architecture import Architecture, ArchitectureMatch, Component, KeySpec
from .cli_command import CliCommand
from .errors import MechaError, MergeError, ModelFileError, PluginError, RecipeError, RecipeSyntaxError
from .hookspecs import hookimpl
from .hyper import blocks, classes, default
from .merge import MergeReport, RecipeMerger, merge
from .merge_method import MergeMethod, merge_method
from .model_type import KeySource, ModelType, OutputEncoder
from .output_file import OutputFile, save_tensors
from .plugins import Plugins, get_plugins, load_plugins, set_plugins, using_plugins
from .recipe import MergeNode, ModelNode, ParameterNode, RecipeNode, compose, model, parameter
from .recipe_format import deserialize, serialize
from .recipe_formats import ReadRecipe, RecipeFormat
from .spaces import Delta, MergeSpace, Same, Weight
from .tensor_files import SafetensorsFile, TensorFile, TensorInfo, open_tensor_file

# torch warns at import when numpy is absent; mecha never uses numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

__version__ = "0.1.0"

__all__ = [
    "Architecture", "ArchitectureMatch", "CliCommand", "Component", "Delta", "KeySource", "KeySpec", "MechaError",
    "MergeError", "MergeMethod", "MergeNode", "MergeReport", "MergeSpace", "ModelFileError", "ModelNode",
    "ModelType", "OutputEncoder", "OutputFile", "ParameterNode", "PluginError", "Plugins", "ReadRecipe", "RecipeError",
    "RecipeFormat", "RecipeMerger", "RecipeNode", "RecipeSyntaxError", "Same", "SafetensorsFile", "TensorFile",
    "TensorInfo", "Weight", "blocks",
    "classes", "compose", "default", "deserialize", "dtypes", "get_plugins", "hookimpl", "keyspecs", "load_plugins",
    "merge", "merge_method", "methods", "model", "open_tensor_file", "parameter", "random_models", "save_tensors",
    "serialize", "set_plugins", "using_plugins",
]


def __getattr__(name: str) -> Any:
    """``mecha_core.<method>``: the registered merge method of that name."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(methods, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(dir(methods)))
