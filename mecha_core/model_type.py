"""Model types: how the tensors stored in a file become the keys of an architecture.

A plain checkpoint (type ``base``, weight space) stores the keys themselves. Other types, such as a
LoRA (delta space), store something from which a key's tensor is computed. A type plugin returns
:class:`ModelType` objects from ``mecha_model_types()``; the core asks each type's ``detect`` about
a file and opens it as a :class:`KeySource` that the scheduler reads key by key.

A type can also be a *save format*: with ``encoder`` set, a merge result can be written in that type
(``mecha merge --as-<type> ARG``), for example a delta saved as a LoRA of some rank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from .architecture import Architecture
from .names import validate_name
from .spaces import MergeSpace
from .tensor_files import TensorFile, TensorInfo

BASE = "base"


class KeySource(Protocol):
    """A model opened for one architecture: the keys it provides and their tensors.

    A source that can read part of a flattened tensor cheaply sets ``supports_ranges = True``; the
    scheduler then streams large keys of elementwise merges in chunks through ``read_flat``.

    A source whose values are cheaper to add than to materialise (a LoRA: a low-rank product) may
    also define ``add_flat(key, start, stop, into, alpha)``: add ``alpha`` times elements
    [start, stop) of the flattened tensor into ``into``, a 1-D tensor of ``stop - start`` elements in
    the work dtype and on the work device. Methods declaring ``coefficients`` (``add_difference``)
    then take the source's values through it. It is called with start=0, stop=numel for a whole
    key, and for any range when ``supports_ranges`` is true. A source whose ``add_flat`` changes
    ``into`` by a rule of the weights it holds rather than by adding fixed values (a DoRA) also sets
    ``adds_to_weights = True``: it is then only called with a buffer of weights (a method whose
    result is in weight space), and a buffer of deltas reads the source instead. An optional
    ``describe()`` returns labelled lines ``mecha inspect`` shows (a LoRA: its naming and algorithms).
    """

    label: str
    supports_ranges: bool

    def keys(self) -> Collection[str]:
        """The architecture keys this model provides."""

    def info(self, key: str) -> TensorInfo:
        """Shape and stored dtype of a key's tensor as this model provides it."""

    def read(self, key: str) -> Any:
        """The key's tensor (any dtype; the scheduler converts)."""

    def read_flat(self, key: str, start: int, stop: int) -> Any:
        """Elements [start, stop) of the flattened tensor; only called when ``supports_ranges`` is true."""

    def close(self) -> None: ...


class OutputEncoder(Protocol):
    """Turns merge results into the tensors of a save format."""

    metadata: Mapping[str, str]

    def layout(self, key: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...], str]]:
        """The tensors (name, shape, torch dtype name) written for a result key; [] skips the key."""

    def encode(self, key: str, tensor: Any) -> list[Any]:
        """The tensors of `layout(key)`, in that order, for the key's result."""


@dataclasses.dataclass(frozen=True, eq=False)
class ModelType:
    """A kind of model file.

    ``detect(file, architectures)`` returns the name of the architecture the file targets when the
    file is of this type, and None when it is not (the ``base`` type has no ``detect``: it is what a
    file is when no other type claims it). ``open(file, architecture)`` returns its :class:`KeySource`.
    ``encoder(architecture, options)``, when given, makes the type a save format; ``save_option``
    names the one option the CLI passes to it (``--as-lora RANK`` -> ``{"rank": "RANK"}``, a string
    from the command line); ``options["save_dtype"]`` is the merge's save dtype (``float16``...).
    ``save_extras``: (name, help) of further options, each a CLI flag ``--<type>-<name> VALUE``
    (``--lora-format peft`` -> ``{"format": "peft"}``), given with ``--as-<type>`` only.
    ``save_extras_usage``, when given, checks the extras given on the command line together (name ->
    value): a one-line message when they do not go together (a usage error, exit 2), None when they do.
    """

    name: str
    space: MergeSpace
    open: Callable[[TensorFile, Architecture], KeySource]
    summary: str = ""
    detect: Callable[[TensorFile, Mapping[str, Architecture]], str | None] | None = None
    encoder: Callable[[Architecture, Mapping[str, Any]], OutputEncoder] | None = None
    save_option: str | None = None
    save_extras: tuple[tuple[str, str], ...] = ()
    save_extras_usage: Callable[[Mapping[str, str]], str | None] | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, "model type")
        if not isinstance(self.space, MergeSpace):
            object.__setattr__(self, "space", MergeSpace.parse(str(self.space)))


class FileKeySource:
    """The ``base`` type: the file stores the architecture's keys, possibly under alias spellings."""

    supports_ranges = True  # read_flat slices the stored tensor without reading the rest

    def __init__(self, file: TensorFile, architecture: Architecture) -> None:
        self.file = file
        self.label = file.label
        self._names = {architecture.canonical(name): name for name in file.tensors}

    def keys(self) -> Collection[str]:
        return self._names.keys()

    def info(self, key: str) -> TensorInfo:
        return self.file.tensors[self._names[key]]

    def read(self, key: str) -> Any:
        return self.file.read(self._names[key])

    def read_flat(self, key: str, start: int, stop: int) -> Any:
        return self.file.read_flat(self._names[key], start, stop)

    def close(self) -> None:
        self.file.close()


BASE_TYPE = ModelType(name=BASE, space=MergeSpace.WEIGHT, open=FileKeySource,
                      summary="a checkpoint storing the architecture's weights as they are")
