"""``merge()``: run a recipe into a safetensors file or a dict."""

from __future__ import annotations

import base64
import dataclasses
import inspect
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from . import config as config_module
from . import dtypes
from .errors import MechaError, unknown
from .executor_spec import Executor, LiveMerge
from .executors import find_executor, make_job
from .model_spec import model_spec_metadata
from .output_file import OutputFile
from .output_folder import DEFAULT_MAX_SHARD_SIZE, OutputFolder, is_folder_output, parse_size
from .planning import MergeOptions, MergePlan, check_device, plan_merge
from .plugins import Plugins, get_plugins
from .recipe import ModelNode, RecipeNode, as_node, draw_random_seeds, transform
from .recipe_format import deserialize, serialize
from .scheduler import DictSink, Progress, RespelledSink, Sink
from .spaces import MergeSpace

NONFINITE_MODES = ("warn", "fail", "skip", "ignore")
STORED_RECIPE_BYTES = 8 << 20  # the recipe in an output's header, JSON-escaped, at most (the whole header may not pass 100 MB)


@dataclasses.dataclass
class MergeReport:
    """What a merge did, for the CLI and for callers who want to know."""

    output: Path | None
    keys_merged: int
    keys_copied: int
    bytes_written: int
    notes: list[str]


def _recipe(recipe: RecipeNode | str | os.PathLike[str], plugins: Plugins | None = None) -> RecipeNode:
    if isinstance(recipe, RecipeNode):
        return recipe
    if isinstance(recipe, (str, os.PathLike)):
        return deserialize(recipe, plugins=plugins)
    raise MechaError(f"expected a recipe (a node, .mecha text or a .mecha path), got {type(recipe).__name__}")


@dataclasses.dataclass(frozen=True)
class MergeSettings:
    """Every option of a merge, as a caller gives it: the keyword arguments of :func:`merge`,
    :func:`merge_with_report` and :func:`make_options`, defined here once.

    - `models_dir`: a folder or a list where model names are looked up; else ``MECHA_MODELS_DIR``,
      else the config file. `threads`, `device`, `work_dtype`, `save_dtype`: else the config file.
    - `fallback_model` provides keys the recipe does not merge (e.g. the VAE). `drop` lists components
      (``ema``) or key patterns (``first_stage_model.*``) to leave out.
    - `nonfinite` is what NaN/inf values do: ``warn`` (a note naming the key and the inputs holding
      them), ``fail`` (stop; nothing is written), ``skip`` (an input holding them at a key counts as
      missing that key) or ``ignore``.
    - `save_dtype` is the dtype of the keys the recipe merges; keys copied unchanged (from a model or
      `fallback_model`: the VAE, say) keep the dtype their file stores.
    - `save_as` writes another model type (``lora``) with `save_options` (``{"rank": 32}``); the
      ``title`` save option (default: the output's file name without suffix) goes into the file's
      model-spec metadata (``modelspec.title``, and a LoRA's ``ss_output_name``). A result in delta
      space (a ``subtract``, a mix of LoRAs) is refused for a file unless `save_as` names a delta
      format: a checkpoint of raw differences would read as a model.
    - `memory_budget` bounds, in bytes, the tensors one worker holds for a chunk of an elementwise merge.
    - `cache` (a dict kept between calls) lets methods that ask for it reuse per-key work: calls of one
      method on the same inputs share an entry, whatever their hyperparameters, so re-merging with
      another alpha skips the expensive part.
    - `progress(key_plan, bytes_written)` is called after each key.
    - `store_model_paths`: the recipe stored in the output names each model by its file name; true
      keeps the paths as the recipe gives them (which may show the folders of this machine).
    - `max_shard_size` (bytes, or ``"5GB"``): the largest shard of a model folder output (default 5GB).
    - `strict`: a model given an architecture (``arch=``) its keys do not fit is refused; False merges
      the keys that fit.
    - `layout` names the model (as the recipe does) whose packaging the output keeps when an
      architecture has optional parts (a FLUX.1 transformer alone or with its text encoders and VAE);
      the first model by default. `save_dtype_all` converts copied keys (a VAE) to `save_dtype` too.
    - `executor` runs the planned merge: ``local`` (a thread pool here; the default, else the config
      file's ``executor``) or one a plugin provides (``ray``, from mecha-ray), given
      `executor_options` (``{"address": "ray://head:10001"}``).
    - `plugins`: the plugin set that reads the recipe and runs the merge (None: ``get_plugins()``).

    Adding an option is a change here only: a field with its default, a line above, and its use,
    in :meth:`resolve` (what the planner and scheduler read, :class:`~mecha_core.planning.MergeOptions`)
    or in :func:`merge_with_report`; merge's signature is built from these fields.
    """

    models_dir: Any = None
    threads: int | None = None
    device: str | None = None
    work_dtype: Any = None
    save_dtype: Any = None
    fallback_model: Any = None
    drop: Iterable[str] = ()
    nonfinite: str = "warn"
    save_as: str | None = None
    save_options: Mapping[str, Any] | None = None
    memory_budget: int | None = None
    cache: dict[Any, Any] | None = None
    progress: Progress | None = None
    store_model_paths: bool = False
    max_shard_size: int | str | None = None
    strict: bool = True
    layout: Any = None
    save_dtype_all: bool = False
    executor: str | None = None
    executor_options: Mapping[str, Any] | None = None
    plugins: Plugins | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> MergeSettings:
        """Settings from keyword arguments; an unknown one is named, with the nearest option."""
        names = [field.name for field in dataclasses.fields(cls)]
        for name in options:
            if name not in names:
                raise TypeError(unknown("merge option", name, names))
        return cls(**options)

    def resolve(self) -> MergeOptions:
        """The options the planner and scheduler read, falling back on MECHA_MODELS_DIR, the config
        file, then defaults."""
        config = config_module.load_config()
        if self.nonfinite not in NONFINITE_MODES:
            raise MechaError(f"nonfinite must be one of {', '.join(NONFINITE_MODES)}, got {self.nonfinite!r}")
        work = self.work_dtype if self.work_dtype is not None else config.work_dtype
        save = self.save_dtype if self.save_dtype is not None else config.save_dtype
        return MergeOptions(
            models_dirs=tuple(config_module.models_dirs(self.models_dir, config)),
            threads=config_module.check_threads(self.threads if self.threads is not None else config.threads),
            device=check_device(str(self.device)) if self.device else check_device(config.device, f"config {config.path}: "),
            work_dtype=_dtype(work, dtypes.WORK_DTYPES, "work dtype"),
            save_dtype=_dtype(save, dtypes.SAVE_DTYPES, "save dtype"),
            fallback_model=as_node(self.fallback_model) if self.fallback_model is not None else None,
            drop=tuple(self.drop),
            nonfinite=self.nonfinite,
            save_as=self.save_as,
            save_options=dict(self.save_options or {}),
            chunk_bytes=self.memory_budget or MergeOptions.chunk_bytes,
            cache=self.cache,
            strict=self.strict,
            layout=None if self.layout is None else str(self.layout),
            save_dtype_all=bool(self.save_dtype_all),
        )


def _dtype(dtype: Any, allowed: tuple[str, ...], what: str) -> str:
    """A dtype's torch name, from a spelling (``fp16``) or a torch dtype, refused unless `allowed`."""
    if isinstance(dtype, str):
        return dtypes.parse(dtype, allowed, what)
    name = dtypes.name_of(dtype)
    if name not in allowed:
        raise MechaError(f"unsupported {what} {name}; use one of {', '.join(allowed)}")
    return name


def make_options(**options: Any) -> MergeOptions:
    """The planner's options from :class:`MergeSettings` keyword arguments."""
    return MergeSettings.of(options).resolve()


def _with_settings(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` shown (``help()``, ``inspect.signature``) with every :class:`MergeSettings` field as
    a keyword argument in place of its ``**options``."""
    signature = inspect.signature(function)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    taken = {p.name for p in own}
    settings = [inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                                  annotation=field.type)
                for field in dataclasses.fields(MergeSettings) if field.name not in taken]
    function.__signature__ = signature.replace(parameters=own + settings)  # type: ignore[attr-defined]
    return function


@_with_settings
def merge(recipe: RecipeNode | str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
          **options: Any) -> Any:
    """Merge a recipe. Returns a dict of tensors when `output` is None, else writes the file and returns its path.

    `recipe` is a recipe node, ``.mecha`` text or the path of a ``.mecha`` file. The options are the
    fields of :class:`MergeSettings` (models folders, threads, dtypes, fallback model, dropped keys,
    NaN/inf handling, save format, memory budget, cache, progress, shard size, strictness, plugin set).

    `output` is a model folder (Hugging Face layout: shards of at most `max_shard_size`, default
    5GB, their index, and the config and tokenizer files of the fallback model, else of the first
    model that has them) when it ends with ``/``, is an existing folder, or `max_shard_size` is
    given for a name without ``.safetensors``. The copied ``config.json`` gets the saved dtype and
    the settings the merge's architecture fixes (``Architecture.output_config``: the layer count of
    an LLM stacked from layer ranges).
    """
    return merge_with_report(recipe, output, **options)[0]


@_with_settings
def merge_with_report(recipe: RecipeNode | str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
                      on_plan: Callable[[MergePlan], None] | None = None, **options: Any) -> tuple[Any, MergeReport]:
    """:func:`merge`, also returning a :class:`MergeReport`; `on_plan` sees the plan before any tensor is read."""
    settings = MergeSettings.of(options)
    max_shard_size = settings.max_shard_size
    shard_size = parse_size(max_shard_size if max_shard_size is not None else DEFAULT_MAX_SHARD_SIZE)
    folder = output is not None and is_folder_output(output, max_shard_size)
    if max_shard_size is not None and not folder:
        raise MechaError("a maximum shard size applies to a model folder output; give a folder (ending with /) or "
                         "leave the size out")
    plugins = settings.plugins or get_plugins()
    node = draw_random_seeds(_recipe(recipe, plugins))
    title = _title(settings.save_options, output)
    if title is not None:
        settings = dataclasses.replace(settings, save_options={"title": title, **(settings.save_options or {})})
    merge_options = settings.resolve()
    executor = find_executor(settings.executor or config_module.load_config().executor, plugins.executors)
    plan = plan_merge(node, merge_options, plugins)
    try:
        if output is not None and plan.root.space != MergeSpace.WEIGHT and plan.encoder is None:
            raise MechaError(_DELTA_RESULT)
        if on_plan is not None:
            on_plan(plan)
        layout = _layout(plan)
        merged = sum(1 for k in plan.keys if k.merge)
        if output is None:
            sink = DictSink(layout)
            _execute(executor, node, settings,
                     LiveMerge(plan, RespelledSink(sink, plan.spellings), None, settings.progress))
            plan.check_inputs_unchanged()
            report = MergeReport(None, merged, len(plan.keys) - merged, 0, plan.notes)
            return sink.tensors, report
        target = Path(output)
        metadata = _stored_recipe(_recipe_text(node, settings.store_model_paths, plugins))
        metadata.update(model_spec_metadata(plan.architecture, merge_options.save_options["title"],
                                            (Path(leaf.label).stem for leaf in plan.leaves)))
        if plan.encoder is not None:
            metadata.update(plan.encoder.metadata)
        inputs = plan.input_paths() + _recipe_files(recipe)
        out: OutputFile | OutputFolder
        if folder:
            out = OutputFolder(target, layout, metadata, inputs=inputs, max_shard_size=shard_size,
                               companions_from=_companions_source(plan) if plan.encoder is None else None,
                               config_updates={**plan.architecture.output_config,
                                               "torch_dtype": plan.options.save_dtype})
        else:
            out = OutputFile(target, layout, metadata, inputs=inputs)
        with out:
            _execute(executor, node, settings,
                     LiveMerge(plan, RespelledSink(_FileSink(out), plan.spellings), out, settings.progress))
            plan.check_inputs_unchanged()
            out.commit()
        return target, MergeReport(target, merged, len(plan.keys) - merged, out.total_size, plan.notes)
    finally:
        plan.close()


_DELTA_RESULT = ("the recipe's result is in delta space (a difference between models, like a LoRA or a "
                 "subtract): a checkpoint of raw differences would read as a model. Save it as a LoRA "
                 "(--as-lora RANK, save_as='lora') or add it to a model (add_difference(model, recipe))")


def _title(save_options: Mapping[str, Any] | None, output: str | os.PathLike[str] | None) -> str | None:
    """The ``title`` save option: given, else the output file's name without its suffix."""
    given = (save_options or {}).get("title")
    if given is not None:
        return str(given)
    return Path(output).stem if output is not None else None


def _recipe_files(recipe: RecipeNode | str | os.PathLike[str]) -> list[Path]:
    """The recipe file, when the recipe was given as one (the output may not replace it)."""
    if isinstance(recipe, os.PathLike) or (isinstance(recipe, str) and "\n" not in recipe and os.path.isfile(recipe)):
        return [Path(recipe)]
    return []


def _companions_source(plan: MergePlan) -> Path | None:
    """The folder whose config and tokenizer files an output folder copies: the fallback model's, else
    the first model's (in recipe order) that has a config.json beside its weights."""
    leaves = ([plan.fallback] if plan.fallback else []) + plan.leaves
    for path in (leaf.path for leaf in leaves if leaf.path is not None):
        folder = path if path.is_dir() else path.parent
        if (folder / "config.json").is_file():
            return folder
    return None


def _recipe_text(node: RecipeNode, store_model_paths: bool, plugins: Plugins | None = None) -> str:
    if not store_model_paths:
        names = _short_names([n.source for n in node.models() if isinstance(n.source, str)])
        node = transform(node, lambda n: ModelNode(names[n.source], n.arch, n.type)
                         if isinstance(n, ModelNode) and isinstance(n.source, str) else n, plugins)
    try:
        return serialize(node)
    except MechaError:
        return "<recipe with in-memory models>"


def _short_names(sources: list[str]) -> dict[str, str]:
    """Each model path cut to its file name, so the folders of the maker's machine stay private;
    paths sharing a file name keep as many of their last folders as tell them apart."""
    parts = {source: [p for p in re.split(r"[\\/]", source) if p] or [source] for source in sources}
    depth = dict.fromkeys(parts, 1)
    while True:
        names = {source: "/".join(parts[source][-depth[source]:]) for source in parts}
        holders: dict[str, set[str]] = {}
        for source, name in names.items():
            holders.setdefault(name, set()).add(source)
        clashes = [s for group in holders.values() if len(group) > 1 for s in group if depth[s] < len(parts[s])]
        if not clashes:
            return names
        for source in clashes:
            depth[source] += 1


def _stored_recipe(text: str) -> dict[str, str]:
    """The recipe as output metadata, bounded: as text, else zlib-compressed (base64, under
    ``mecha_recipe_zlib``), else a note saying it was left out, so the header stays readable."""
    if len(json.dumps(text)) <= STORED_RECIPE_BYTES:
        return {"mecha_recipe": text}
    packed = base64.b64encode(zlib.compress(text.encode("utf-8"), 9)).decode("ascii")
    if len(packed) <= STORED_RECIPE_BYTES:
        return {"mecha_recipe_zlib": packed}
    return {"mecha_recipe_omitted": f"the recipe ({text.count(chr(10))} lines, {len(text)} characters) is too "
                                    f"large to store in the output; keep its .mecha file"}


def stored_recipe(metadata: Mapping[str, str]) -> str | None:
    """The recipe an output of mecha holds in its metadata (None when it holds none)."""
    if "mecha_recipe" in metadata:
        return metadata["mecha_recipe"]
    if "mecha_recipe_zlib" in metadata:
        try:
            return zlib.decompress(base64.b64decode(metadata["mecha_recipe_zlib"])).decode("utf-8")
        except (ValueError, zlib.error):
            return None
    return metadata.get("mecha_recipe_omitted")


def _layout(plan: MergePlan) -> list[tuple[str, str, tuple[int, ...]]]:
    layout = []
    for key in plan.keys:
        if plan.encoder is not None and key.merge:
            layout.extend((name, dtype_name, shape) for name, shape, dtype_name in plan.encoder.layout(key.name, key.shape))
        else:
            layout.append((plan.spellings.get(key.name, key.name), key.out_dtype, key.shape))
    names = [name for name, _, _ in layout]
    if len(names) != len(set(names)):
        raise MechaError("the output would hold the same tensor name twice; the save format's layout is inconsistent")
    return layout


class _FileSink(Sink):
    def __init__(self, out: OutputFile | OutputFolder) -> None:
        self.out = out

    def write(self, name: str, tensor: Any, start_element: int = 0) -> None:
        self.out.write(name, tensor, start_element)


def _execute(executor: Executor, node: RecipeNode, settings: MergeSettings, live: LiveMerge) -> None:
    executor.run(make_job(live.plan, live.output, settings.executor_options or {}, node), live)
