"""mecha: a memory-efficient, general-purpose model merger built from plugins.

Build a recipe, then merge it::

    import mecha_core as mecha
    recipe = mecha.weighted_sum("a.safetensors", "b.safetensors", alpha=0.3)
    mecha.merge(recipe, "out.safetensors")

Every registered merge method is an attribute of this package (and of ``mecha_core.methods``).

``__all__`` is the whole API, for scripts and plugins alike: a plugin imports from ``mecha_core``
the names listed there (modules among them: ``dtypes``, ``keyspecs``, ``random_models``,
``methods``, ``executors``) and the test kit ``mecha_core.testing``, nothing else (a test keeps it so).
"""

from __future__ import annotations

from typing import Any

from . import dtypes, executors, keyspecs, methods, random_models
from .architecture import Architecture, ArchitectureMatch, Component, KeySpec, generic_key_spec
from .cli_command import CliCommand
from .errors import MechaError, MergeError, ModelFileError, PluginError, RecipeError, RecipeSyntaxError
from .executor_spec import Executor
from .explain import Explanation, explain
from .hookspecs import hookimpl
from .hyper import blocks, classes, default
from .lazy_input import LazyInput
from .merge import MergeReport, merge
from .merge_method import MergeMethod, merge_method
from .model_type import KeySource, ModelType, OutputEncoder
from .output_file import OutputFile, save_tensors
from .plugins import Plugins, get_plugins, load_plugins, set_plugins, using_plugins
from .recipe import MergeNode, ModelNode, ParameterNode, RecipeNode, compose, model, parameter
from .recipe_format import deserialize, serialize
from .recipe_format_spec import RecipeFormat
from .recipe_formats import ReadRecipe
from .spaces import Delta, MergeSpace, Same, Weight
from .sharded_files import open_tensor_file
from .tensor_files import SafetensorsFile, TensorFile, TensorInfo

__version__ = "0.1.0"

__all__ = [
    "Architecture", "ArchitectureMatch", "CliCommand", "Component", "Delta", "Executor", "Explanation", "KeySource",
    "KeySpec", "LazyInput", "MechaError", "MergeError", "MergeMethod", "MergeNode", "MergeReport", "MergeSpace",
    "ModelFileError", "ModelNode", "ModelType", "OutputEncoder", "OutputFile", "ParameterNode", "PluginError",
    "Plugins", "ReadRecipe", "RecipeError", "RecipeFormat", "RecipeNode", "RecipeSyntaxError", "Same",
    "SafetensorsFile", "TensorFile", "TensorInfo", "Weight", "blocks", "classes", "compose", "default",
    "deserialize", "dtypes", "executors", "explain", "generic_key_spec", "get_plugins", "hookimpl", "keyspecs",
    "load_plugins", "merge", "merge_method", "methods", "model", "open_tensor_file", "parameter", "random_models",
    "save_tensors", "serialize", "set_plugins", "using_plugins",
]


def __getattr__(name: str) -> Any:
    """``mecha_core.<method>``: the registered merge method of that name; an sd-mecha 0.0.x name that is not
    a merge method says where it lives now."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return getattr(methods, name)
    except AttributeError:
        if name not in SD_MECHA_NAMES:
            raise
    raise AttributeError(f"module 'mecha_core' has no attribute {name!r}: sd-mecha's {name} is not a merge "
                         f"method; it lives in {SD_MECHA_NAMES[name]}")


_COMPAT = "mecha_compat (pip install mecha-compat; `import mecha_compat as sd_mecha` runs sd-mecha 0.0.x scripts)"
_HELPER = "mecha_methods (a recipe helper: `from mecha_methods import {}`) and " + _COMPAT
# sd-mecha 0.0.25's top-level names that are not merge methods (and not mecha_core names), by where they live now
SD_MECHA_NAMES: dict[str, str] = {
    **dict.fromkeys(["set_log_level", "RecipeMerger", "merge_and_save", "serialize_and_save", "deserialize_path",
                     "lora", "Hyper", "extensions", "recipe_nodes", "merge_methods", "cosine_add_a", "cosine_add_b",
                     "add_difference_ties_extended", "RecipeNodeOrPath", "path_to_node"], _COMPAT),
    **{name: _HELPER.format(name) for name in ["add_perpendicular", "add_difference_ties", "ties_with_dare",
                                               "model_stock_n_models", "copy_region"]},
}


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(dir(methods)))
