"""Finding, loading and listing plugins; the registries built from what they return.

Plugins are entry points of the group ``mecha``. They are loaded on first use, one at a time: a plugin
that fails to import, implements a hook that does not exist, or raises when asked for its objects is
reported as one warning naming it and its distribution, and everything else keeps working
(``MECHA_STRICT_PLUGINS=1`` makes that an error). ``MECHA_LOAD_PLUGINS`` is an allow-list of plugin
names (empty: none). The core's own built-ins are registered exactly like a third-party plugin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pluggy

from . import hookspecs
from .architecture import Architecture
from .cli_command import CliCommand
from .errors import PluginError, from_signal, unknown
from .executor_spec import Executor
from .method_spec import MethodSpec
from .model_type import ModelType
from .recipe_format_spec import RecipeFormat

if TYPE_CHECKING:  # what the decorator makes of a method: a MethodSpec that builds recipes when called
    from .merge_method import MergeMethod

ENTRY_POINT_GROUP = "mecha"
CORE_PLUGINS = ("mecha_core.builtin",)
T = TypeVar("T")


class PluginWarning(UserWarning):
    """A plugin could not be loaded or used; the rest of mecha keeps working."""


@dataclasses.dataclass
class PluginRecord:
    """What ``mecha plugins`` shows about one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    status: str = "active"
    hooks: list[str] = dataclasses.field(default_factory=list)
    provides: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.distribution:
            return f"{self.name!r} ({self.distribution} {self.version or '?'})"
        return repr(self.name)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Registry(Generic[T]):
    """Named objects of one kind, each with the plugin that provided it."""

    def __init__(self, kind: str, failed: Callable[[], list[str]]) -> None:
        self.kind = kind
        self.items: dict[str, T] = {}
        self.providers: dict[str, str] = {}
        self._failed = failed

    def get(self, name: str) -> T:
        try:
            return self.items[name]
        except KeyError:
            failed = self._failed()
            extra = f" (plugins that failed to load: {', '.join(failed)})" if failed else ""
            raise PluginError(unknown(self.kind, name, self.items) + extra) from None

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def values(self) -> list[T]:
        return [self.items[name] for name in self]


# registry -> (hook, what one item is, its class); a merge method is checked as the MethodSpec that
# every MergeMethod is, since this module sits below the one building recipes
HOOKS: dict[str, tuple[str, str, type]] = {
    "merge_methods": ("mecha_merge_methods", "merge method", MethodSpec),
    "architectures": ("mecha_architectures", "architecture", Architecture),
    "model_types": ("mecha_model_types", "model type", ModelType),
    "cli_commands": ("mecha_cli_commands", "CLI command", CliCommand),
    "recipe_formats": ("mecha_recipe_formats", "recipe format", RecipeFormat),
    "executors": ("mecha_executors", "executor", Executor),
}


def spec_type_name(spec_type: type) -> str:
    """The public name of the objects a hook returns (``MergeMethod`` for the ``MethodSpec`` checked)."""
    return "MergeMethod" if spec_type is MethodSpec else spec_type.__name__


class Plugins:
    """A loaded plugin set: the pluggy manager, what each plugin is, and the registries."""

    def __init__(self, manager: pluggy.PluginManager, records: dict[str, PluginRecord], *, strict: bool) -> None:
        self.manager = manager
        self.records = records
        self.strict = strict
        self._lock = threading.RLock()
        self._registries: dict[str, Registry[Any]] = {}

    # registries -------------------------------------------------------------------------------
    @property
    def merge_methods(self) -> Registry[MergeMethod]:
        return self._registry("merge_methods")

    @property
    def architectures(self) -> Registry[Architecture]:
        return self._registry("architectures")

    @property
    def model_types(self) -> Registry[ModelType]:
        return self._registry("model_types")

    @property
    def cli_commands(self) -> Registry[CliCommand]:
        return self._registry("cli_commands")

    @property
    def recipe_formats(self) -> Registry[RecipeFormat]:
        return self._registry("recipe_formats")

    @property
    def executors(self) -> Registry[Executor]:
        return self._registry("executors")

    def _registry(self, attribute: str) -> Registry[Any]:
        with self._lock:
            if attribute not in self._registries:
                self._registries[attribute] = self._build(attribute)
            return self._registries[attribute]

    def _build(self, attribute: str) -> Registry[Any]:
        hook_name, kind, spec_type = HOOKS[attribute]
        registry: Registry[Any] = Registry(kind, self.failed)
        for record in self.records.values():
            record.provides.pop(attribute, None)
        conflicts: list[str] = []
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():  # registration order
            record = self.records.get(impl.plugin_name) or PluginRecord(impl.plugin_name)
            if not record.status.startswith("active"):
                continue
            items, problem = _call_hook(impl, hook_name, spec_type)
            if problem:
                self._fail(record, problem)
                continue
            for item in items:
                if item.name in registry.items:
                    other = self.records.get(registry.providers[item.name]) or PluginRecord(registry.providers[item.name])
                    both = f"twice by {record.label}" if other.name == record.name else \
                        f"by both {other.label} and {record.label}"
                    conflicts.append(f"{kind} {item.name!r} is provided {both}")
                    continue
                registry.items[item.name] = item
                registry.providers[item.name] = record.name
                record.provides.setdefault(attribute, []).append(item.name)
        if conflicts:  # every conflict at once, after every plugin was asked (`mecha plugins` shows them all)
            raise PluginError("; ".join(conflicts) + "; uninstall one of them or limit MECHA_LOAD_PLUGINS")
        return registry

    def _fail(self, record: PluginRecord, reason: str) -> None:
        """Mark a plugin failed; it then provides nothing, so registries built before are rebuilt without it."""
        record.status = f"failed: {reason}"
        record.provides.clear()
        self._registries.clear()
        self.report(f"plugin {record.label} failed: {reason}")

    def report(self, message: str) -> None:
        """A plugin problem: one warning, or an error when the set is strict (``MECHA_STRICT_PLUGINS``)."""
        report_problem(message, self.strict)

    def failed(self) -> list[str]:
        return [r.name for r in self.records.values() if r.status.startswith("failed")]

    def provider(self, attribute: str, name: str) -> PluginRecord:
        """The record of the plugin that provided `name` in registry `attribute`."""
        plugin = self._registry(attribute).providers[name]
        return self.records.get(plugin) or PluginRecord(plugin)

    def load_all_registries(self) -> None:
        """Build every registry, so that `records` tells what each plugin provides.

        A name conflict in one registry does not stop the others from being built; the conflicts are
        raised together at the end.
        """
        conflicts = []
        for attribute in HOOKS:
            try:
                self._registry(attribute)
            except PluginError as error:
                conflicts.append(str(error))
        if conflicts:
            raise PluginError("; ".join(conflicts))

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object (a module or any object with hook functions) after loading.

        For tests and scripts; registries are rebuilt on next use.
        """
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        with self._lock:
            if name in self.records:
                self.report(f"plugin name {name!r} is already taken by {self.records[name].label}; "
                            f"register {plugin!r} under another name")
                return name
            self.records[name] = _register(self.manager, plugin, name, PluginRecord(name), self)
            self._registries.clear()
        return name


def _call_hook(impl: pluggy.HookImpl, hook_name: str, spec_type: type) -> tuple[list[Any], str | None]:
    """The objects one hook implementation returns, or why they cannot be used."""
    try:
        result = impl.function()
        if result is not None and not isinstance(result, Iterable):
            return [], f"{hook_name}() returned {result!r}; return a list of {spec_type.__name__} objects"
        items = list(result or ())
    except BaseException as error:  # sys.exit() or a KeyboardInterrupt of its own: the plugin's failure
        if isinstance(error, KeyboardInterrupt) and from_signal(error):
            raise
        return [], f"{hook_name}() raised {type(error).__name__}: {error}"
    wrong = next((item for item in items if not isinstance(item, spec_type)), None)
    if wrong is not None:
        hint = " (decorate it with @mecha_core.merge_method)" if spec_type is MethodSpec and callable(wrong) else ""
        return [], f"{hook_name}() returned {wrong!r}, expected {spec_type_name(spec_type)} objects{hint}"
    return items, None


def _register(manager: pluggy.PluginManager, plugin: object, name: str, record: PluginRecord,
              plugins: Plugins | None = None, strict: bool = False) -> PluginRecord:
    """Register one plugin object, or report why it cannot be: it then stays unregistered."""
    strict = strict or (plugins.strict if plugins else False)
    try:
        manager.register(plugin, name=name)
        problem = _hook_problem(plugin, manager.get_hookcallers(plugin) or [])
    except Exception as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, pluggy.PluginValidationError):
            problem = f"invalid hook implementation: {problem}"
    if problem:
        if manager.get_plugin(name) is plugin:  # never unregister another plugin that holds the name
            manager.unregister(name=name)
        record.status = f"failed: {problem}"
        _report(record, strict)
        return record
    record.hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or ())
    return record


def _unknown_hook(name: str, hook_names: list[str]) -> str:
    """An unknown hook's message, its nearest hooks found without the ``mecha_`` they all start with
    (which alone would make ``mecha_executors`` look close to ``mecha_merge_method``)."""
    bare = {hook.removeprefix("mecha_"): hook for hook in hook_names}
    close = difflib.get_close_matches(name.removeprefix("mecha_"), list(bare), n=3, cutoff=0.6)
    if not close:
        return unknown("hook", name, hook_names)
    return f"unknown hook {name!r}; did you mean " + " or ".join(repr(bare[c]) for c in close) + "?"


def _hook_problem(plugin: object, callers: list[pluggy.HookCaller]) -> str | None:
    """Why a registered plugin's hooks are unusable: a misspelled hook name, or no hook at all.

    pluggy registers a misspelled hook without complaint and ignores a hook function that lacks
    ``@hookimpl``: either would be a plugin that loads fine and provides nothing.
    """
    hook_names = [hook for hook, _, _ in HOOKS.values()]
    misspelled = [caller.name for caller in callers if not caller.has_spec()
                  and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())]
    if misspelled:
        return "invalid hook implementation: " + "; ".join(_unknown_hook(name, hook_names) for name in misspelled)
    if not callers:
        unmarked = [hook for hook in hook_names if callable(getattr(plugin, hook, None))]
        return "implements no mecha hook" + (f": decorate {', '.join(unmarked)} with @mecha_core.hookimpl"
                                             if unmarked else "")
    return None


def _report(record: PluginRecord, strict: bool) -> None:
    report_problem(f"plugin {record.label} {record.status}", strict)


def report_problem(message: str, strict: bool) -> None:
    """One warning line, or a :class:`PluginError` in strict mode."""
    if strict:
        raise PluginError(message + " (MECHA_STRICT_PLUGINS is set)")
    warnings.warn(message, PluginWarning, stacklevel=3)


def create_manager() -> pluggy.PluginManager:
    """A plugin manager knowing mecha's hooks and nothing else."""
    manager = pluggy.PluginManager("mecha")
    manager.add_hookspecs(hookspecs)
    return manager


@dataclasses.dataclass(frozen=True)
class PluginSettings:
    """Which installed plugins load (None: all) and whether a plugin problem is an error."""

    allow: frozenset[str] | None
    strict: bool

    @classmethod
    def resolve(cls, allow: Iterable[str] | None = None, strict: bool | None = None) -> PluginSettings:
        """The values given, else ``MECHA_LOAD_PLUGINS`` (comma-separated names; empty: none) and
        ``MECHA_STRICT_PLUGINS`` (set, and not ``0``, ``false`` or ``no``)."""
        if strict is None:
            strict = os.environ.get("MECHA_STRICT_PLUGINS", "").strip().lower() not in ("", "0", "false", "no")
        if allow is None and "MECHA_LOAD_PLUGINS" in os.environ:
            allow = [n.strip() for n in os.environ["MECHA_LOAD_PLUGINS"].split(",") if n.strip()]
        return cls(frozenset(allow) if allow is not None else None, strict)

    def allows(self, entry_point: importlib.metadata.EntryPoint) -> bool:
        """Whether an entry point is loaded: its plugin name or its distribution is allowed."""
        return self.allow is None or entry_point.name in self.allow or _distribution_name(entry_point) in self.allow


def load_plugins(entry_points: Iterable[importlib.metadata.EntryPoint] | None = None, *,
                 builtins: Iterable[str] = CORE_PLUGINS, allow: Iterable[str] | None = None,
                 strict: bool | None = None) -> Plugins:
    """Build a plugin set: the core built-ins, then each allowed entry point, one at a time.

    `entry_points` defaults to the installed ones of group ``mecha``; `allow` and `strict` to the
    environment (:meth:`PluginSettings.resolve`).
    """
    settings = PluginSettings.resolve(allow, strict)
    plugins = Plugins(create_manager(), {}, strict=settings.strict)
    for module_name in builtins:
        _load_builtin(plugins, module_name)
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry_point in sorted(entry_points, key=lambda ep: ep.name):
        if settings.allows(entry_point):
            _load_entry_point(plugins, entry_point)
    if settings.allow:
        missing = sorted(settings.allow - {r.name for r in plugins.records.values()}
                         - {r.distribution for r in plugins.records.values()})
        if missing:
            warnings.warn(f"MECHA_LOAD_PLUGINS names plugins that are not installed: {', '.join(missing)}",
                          PluginWarning, stacklevel=2)
    return plugins


def _load_builtin(plugins: Plugins, module_name: str) -> None:
    """One of the core's own plugin modules, recorded as a plugin of distribution mecha-core."""
    record = PluginRecord("core" if module_name == "mecha_core.builtin" else module_name, "mecha-core",
                          _version("mecha-core"))
    plugins.records[record.name] = _register(plugins.manager, importlib.import_module(module_name), record.name,
                                             record, plugins)


def _distribution_name(entry_point: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(entry_point, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _load_entry_point(plugins: Plugins, entry_point: importlib.metadata.EntryPoint) -> None:
    """Import and register one installed plugin, or record and report why it cannot be."""
    dist = getattr(entry_point, "dist", None)
    dist_name = _distribution_name(entry_point)
    record = PluginRecord(entry_point.name, dist_name, dist.version if dist is not None else None)
    if entry_point.name in plugins.records:
        record.status = f"failed: the plugin name {entry_point.name!r} is already taken by {plugins.records[entry_point.name].label}"
        plugins.records[f"{entry_point.name} ({dist_name})"] = record
        _report(record, plugins.strict)
        return
    plugins.records[record.name] = record
    try:
        plugin = entry_point.load()
    except BaseException as error:  # a plugin's sys.exit() or KeyboardInterrupt at import must not end mecha
        if isinstance(error, KeyboardInterrupt) and from_signal(error):
            raise
        record.status = f"failed: cannot import {entry_point.value}: {type(error).__name__}: {error}"
        _report(record, plugins.strict)
        return
    _register(plugins.manager, plugin, entry_point.name, record, plugins)


@functools.cache
def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


_current: Plugins | None = None
_current_lock = threading.Lock()


def get_plugins() -> Plugins:
    """The plugin set in use, loaded on first call."""
    global _current
    with _current_lock:
        if _current is None:
            _current = load_plugins()
        return _current


def set_plugins(plugins: Plugins | None) -> Plugins | None:
    """Replace the plugin set in use (None: reload on next use); returns the previous one."""
    global _current
    with _current_lock:
        previous, _current = _current, plugins
        return previous


@contextlib.contextmanager
def using_plugins(plugins: Plugins) -> Iterator[Plugins]:
    """Use `plugins` inside a ``with`` block, then restore the previous set."""
    previous = set_plugins(plugins)
    try:
        yield plugins
    finally:
        set_plugins(previous)
