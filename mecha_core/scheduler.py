"""The streaming key scheduler: evaluate the recipe one key at a time, on several threads.

For each output key, the recipe tree is evaluated for that key only: the input tensors it needs are
read (zero-copy views of the files), converted to the work dtype, passed through the merge methods,
cast to the save dtype and written; then everything for the key is freed. A node used twice in the
tree is computed once per key. When every method in the tree is elementwise, large tensors are
processed in flat chunks sized so that all inputs of one chunk fit a fixed budget: memory then
depends neither on the number of models nor on the largest tensor.
"""

from __future__ import annotations

import concurrent.futures
import gc
import math
import threading
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from . import dtypes
from .architecture import Architecture, KeySpec
from .errors import MechaError, MergeError, from_signal
from .hyper import resolve
from .lazy_input import LazyInput
from .planning import KeyPlan, MergePlan, Op, op_inputs, provides, usable_inputs
from .spaces import MergeSpace
from .traversal import post_order

Progress = Callable[[KeyPlan, int], None]


class Sink:
    """Where results go: a file being written or a dict."""

    def write(self, name: str, tensor: Any, start_element: int = 0) -> None:
        raise NotImplementedError


class RespelledSink(Sink):
    """Writes each key under the name the output spells it with (see ``MergePlan.spellings``)."""

    def __init__(self, sink: Sink, spellings: Mapping[str, str]) -> None:
        self.sink = sink
        self.spellings = spellings

    def write(self, name: str, tensor: Any, start_element: int = 0) -> None:
        self.sink.write(self.spellings.get(name, name), tensor, start_element)


class DictSink(Sink):
    def __init__(self, layout: list[tuple[str, str, tuple[int, ...]]]) -> None:
        import torch
        self.tensors: dict[str, Any] = {}
        self._layout = {name: (dtype_name, shape) for name, dtype_name, shape in layout}
        self._torch = torch

    def write(self, name: str, tensor: Any, start_element: int = 0) -> None:
        dtype_name, shape = self._layout[name]
        if start_element == 0 and tensor.numel() == _numel(shape):
            self.tensors[name] = tensor.reshape(shape).clone()
            return
        target = self.tensors.get(name)
        if target is None:
            target = self.tensors[name] = self._torch.empty(shape, dtype=dtypes.to_torch(dtype_name))
        target.view(-1)[start_element:start_element + tensor.numel()].copy_(tensor.reshape(-1))


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


class _Cancelled(Exception):
    pass


class KeyRunner:
    """Evaluates the plan's recipe for one key at a time; safe to call from several threads."""

    def __init__(self, plan: MergePlan, sink: Sink) -> None:
        import torch
        self.torch = torch
        self.plan = plan
        self.sink = sink
        self.options = plan.options
        self.cancelled = threading.Event()
        self.nonfinite: list[str] = []
        self.clamped: dict[str, int] = {}  # key -> values clamped to the fp8 save dtype's range
        self._lock = threading.Lock()
        ops = list(post_order(plan.root, op_inputs))
        self.uses: dict[int, int] = {id(op): 0 for op in ops}  # how many calls take each node
        for op in ops:
            for child in op.inputs:
                self.uses[id(child)] += 1
        self.leaf_ops = [op for op in ops if op.leaf is not None]
        leaves = len(self.leaf_ops)
        self.item = item = torch.empty((), dtype=dtypes.to_torch(self.options.work_dtype)).element_size()
        # bytes one element of a key costs while it is evaluated: every node's value, every model's
        # converted input, the result and its cast
        self.per_element = item * (len(self.uses) + leaves + 2)
        self.chunk = max(1 << 16, self.options.chunk_bytes // self.per_element)

    # one key ------------------------------------------------------------------------------------
    def run(self, plan: KeyPlan) -> int:
        """Compute and write one key; returns the bytes written.

        A key is written one of five ways: copied from a model; taken from a finite model when
        ``nonfinite="skip"`` leaves the recipe nothing to merge; encoded into another model type's
        tensors; computed chunk by chunk; or computed whole."""
        if self.cancelled.is_set():
            raise _Cancelled()
        if not plan.merge:
            return self._write_copy(plan)
        present: dict[int, bool] = {}
        if self.options.nonfinite == "skip":
            present = self._exclude_nonfinite_inputs(plan)
            if present and not provides(self.plan.root, plan.name, dict(present)):
                return self._write_donor(plan, present)
        if self.plan.encoder is not None:
            return self._write_encoded(plan, present)
        if plan.chunkable and plan.numel > self.chunk:
            return self._write_chunks(plan, present)
        return self._write_whole(plan, present)

    def _write_copy(self, plan: KeyPlan) -> int:
        """A key the recipe does not merge: the model's tensor as stored."""
        assert plan.copy_from is not None and plan.copy_from.source is not None
        tensor = plan.copy_from.source.read(plan.name)
        self._check_finite(plan, tensor, [plan.copy_from.label])
        if dtypes.name_of(tensor.dtype) != plan.out_dtype:  # save_dtype_all
            tensor = self._cast(plan, tensor, dtypes.to_torch(plan.out_dtype))
        self.sink.write(plan.name, tensor.contiguous())
        return tensor.numel() * tensor.element_size()

    def _write_encoded(self, plan: KeyPlan, present: dict[int, bool]) -> int:
        """The key's result in the save format's tensors (a LoRA's up and down)."""
        encoder = self.plan.encoder
        assert encoder is not None
        result = self._evaluate(plan, None, present)
        self._check_finite(plan, result)
        written = 0
        for (name, _, dtype_name), tensor in zip(encoder.layout(plan.name, plan.shape), encoder.encode(plan.name, result)):
            out = self._cast(plan, tensor.to(device="cpu"), dtypes.to_torch(dtype_name)).contiguous()
            self.sink.write(name, out)
            written += out.numel() * out.element_size()
        return written

    def _write_chunks(self, plan: KeyPlan, present: dict[int, bool]) -> int:
        """An elementwise recipe on a large key: flat ranges computed and written one at a time."""
        out_dtype = dtypes.to_torch(plan.out_dtype)
        written = 0
        step = _chunk_step(self.chunk, plan)
        for start in range(0, plan.numel, step):
            if self.cancelled.is_set():
                raise _Cancelled()
            stop = min(start + step, plan.numel)
            out = self._saved(plan, self._evaluate(plan, (start, stop), present).to(device="cpu"), out_dtype)
            self.sink.write(plan.name, out, start)
            written += out.numel() * out.element_size()
        return written

    def _write_whole(self, plan: KeyPlan, present: dict[int, bool]) -> int:
        out = self._saved(plan, self._evaluate(plan, None, present).to(device="cpu"), dtypes.to_torch(plan.out_dtype))
        self.sink.write(plan.name, out)
        return out.numel() * out.element_size()

    def _saved(self, plan: KeyPlan, result: Any, dtype: Any) -> Any:
        """A result in the save dtype, checked for NaN/inf. An fp8 target is checked before the cast,
        on the bounds that also tell whether values need clamping: one pass instead of two."""
        if dtypes.is_fp8(dtype) and result.dtype != dtype and result.numel():
            low, high = dtypes.bounds(result)
            if not (math.isfinite(low) and math.isfinite(high)):
                self._check_finite(plan, result)
            return self._cast(plan, result, dtype, (low, high)).contiguous()
        out = result.to(dtype=dtype).contiguous()
        self._check_finite(plan, out)
        return out

    def _cast(self, plan: KeyPlan, tensor: Any, dtype: Any, known_bounds: tuple[float, float] | None = None) -> Any:
        """`tensor` in the save dtype; values beyond an fp8 format's range are clamped and counted."""
        out, clamped = dtypes.cast_for_save(tensor, dtype, known_bounds)
        if clamped:
            with self._lock:
                self.clamped[plan.name] = self.clamped.get(plan.name, 0) + clamped
        return out

    def _check_finite(self, plan: KeyPlan, out: Any, culprits: list[str] | None = None) -> None:
        """Apply the ``nonfinite`` option to a result (or a part of it); `culprits` are the inputs to
        blame when known, else the inputs holding NaN/inf at the key are looked up (once per key)."""
        if self.options.nonfinite == "ignore" or _all_finite(self.torch, out):
            return
        if self.options.nonfinite == "warn" and plan.name in self.nonfinite:
            return  # another chunk of this key was already reported
        if culprits is None:
            culprits = [leaf.label for leaf in self.plan.leaves
                        if plan.name in leaf.source.keys()  # type: ignore[union-attr]
                        and not _all_finite(self.torch, leaf.source.read(plan.name))]  # type: ignore[union-attr]
        where = f"inputs with NaN/inf at this key: {', '.join(culprits)}" if culprits else \
            "the inputs are finite: the merge method or the cast to the save dtype produced them"
        if self.options.nonfinite == "fail":
            raise MergeError(f"key {plan.name!r}: the result holds NaN or inf values ({where})")
        with self._lock:
            if plan.name not in self.nonfinite:
                self.nonfinite.append(plan.name)
                self.plan.notes.append(f"key {plan.name!r} holds NaN or inf values ({where})")

    def _exclude_nonfinite_inputs(self, plan: KeyPlan) -> dict[int, bool]:
        """``nonfinite="skip"``: inputs holding NaN/inf at this key count as not having it."""
        excluded: dict[int, bool] = {}
        for op in self.leaf_ops:
            source = op.leaf.source  # type: ignore[union-attr]
            if plan.name in source.keys() and not _all_finite(self.torch, source.read(plan.name)):
                excluded[id(op)] = False
                with self._lock:
                    self.plan.notes.append(f"key {plan.name!r}: {source.label} holds NaN or inf there; "
                                           f"treated as missing")
        return excluded

    def _write_donor(self, plan: KeyPlan, present: dict[int, bool]) -> int:
        """When skipping non-finite inputs leaves the recipe nothing to merge: a finite model's value."""
        donor = next((op for op in self.leaf_ops if op.space == MergeSpace.WEIGHT and present.get(id(op), True)
                      and plan.name in op.leaf.source.keys()), None)  # type: ignore[union-attr]
        if donor is None or self.plan.encoder is not None:
            raise MergeError(f"key {plan.name!r}: every input that could provide it holds NaN or inf values")
        out = self._cast(plan, donor.leaf.source.read(plan.name), dtypes.to_torch(plan.out_dtype)).contiguous()  # type: ignore[union-attr]
        self.sink.write(plan.name, out)
        return out.numel() * out.element_size()

    def _evaluate(self, plan: KeyPlan, region: tuple[int, int] | None, present: dict[int, bool]) -> Any:
        """The recipe's value for one key (or one flat region of it).

        Walks the method nodes the key needs (:func:`~mecha_core.traversal.post_order`, no
        recursion, so a recipe thousands of merges deep is fine): entering a node decides what it
        needs (the inputs that have the key, or the input standing in for it); it is computed after
        those. Models are read when a method takes them (a method that adds a source into a buffer
        never materialises it); a value is freed as soon as its last consumer has run."""
        memo: dict[int, Any] = {}
        remaining = dict(self.uses)
        present = dict(present)
        needs: dict[int, tuple[list[int], Op | None]] = {}

        def needed(op: Op) -> list[Op]:
            positions = usable_inputs(op, plan.name, present)
            delegate = None if positions is not None else next(
                c for c in op.inputs if c.space == op.space and provides(c, plan.name, present))
            needs[id(op)] = (positions or [], delegate)
            return [delegate] if delegate else [op.inputs[i] for i in positions or []]

        for op in post_order(self.plan.root, needed, _is_leaf):
            positions, delegate = needs[id(op)]
            memo[id(op)] = self._value(delegate, plan, region, memo) if delegate else \
                self._call(op, positions, plan, region, memo, remaining)
        result = self._value(self.plan.root, plan, region, memo)
        expected = (region[1] - region[0],) if region else plan.shape
        if tuple(result.shape) != tuple(expected):
            raise MergeError(f"key {plan.name!r}: the recipe produced shape {list(result.shape)}, "
                             f"expected {list(expected)}")
        return result

    def _value(self, op: Op, plan: KeyPlan, region: tuple[int, int] | None, memo: dict[int, Any]) -> Any:
        """A node's value: computed already, or a model's tensor read now (and kept for its other consumers)."""
        if id(op) not in memo:
            source = op.leaf.source  # type: ignore[union-attr]
            memo[id(op)] = source.read(plan.name) if region is None else source.read_flat(plan.name, *region)
        return memo[id(op)]

    def _call(self, op: Op, positions: list[int], plan: KeyPlan, region: tuple[int, int] | None,
              memo: dict[int, Any], remaining: dict[int, int]) -> Any:
        method = op.method
        assert method is not None
        device = op.device or self.options.device
        work = dtypes.to_torch(op.dtype or self.options.work_dtype)
        hypers = call_hypers(op, positions, self.plan.architecture, plan.spec)
        children = [op.inputs[i] for i in positions]
        if method.coefficients is not None:
            result = self._combine(op, children, hypers, plan, region, memo, remaining, device, work)
        elif method.lazy_inputs:
            args = [self._lazy(child, plan, memo, device, work) for child in children]
            self._release(op, memo, remaining)
            result = self._invoke(op, args, hypers, plan, device, work)
        else:
            args = []
            for child in children:
                value = self._value(child, plan, region, memo)
                # fp8 has almost no arithmetic kernels: a method always gets it upcast (this chunk only)
                keep_dtype = method.stored_inputs and child.leaf is not None and value.is_floating_point() \
                    and value.element_size() > 1
                args.append(value.to(device=device) if keep_dtype else dtypes.widen(value.to(device=device), work))
            self._release(op, memo, remaining)
            result = self._invoke(op, args, hypers, plan, device, work)
        if not isinstance(result, self.torch.Tensor):
            raise MergeError(f"merge method {method.name!r}{_origin(op)} returned {type(result).__name__} for key "
                             f"{plan.name!r}, expected a tensor")
        if result.is_meta or result.layout != self.torch.strided:
            what = "a meta tensor (no data)" if result.is_meta else f"a {result.layout} tensor"
            raise MergeError(f"merge method {method.name!r}{_origin(op)} returned {what} for key {plan.name!r}, "
                             f"expected a dense tensor with data")
        return result

    def _lazy(self, child: Op, plan: KeyPlan, memo: dict[int, Any], device: str, work: Any) -> LazyInput:
        """An input of a ``lazy_inputs`` method (never chunked: such a method is not elementwise): a
        model that can read ranges is read range by range when the method asks (in the work dtype, on
        its device); anything else is its value, wrapped."""
        source = child.leaf.source if child.leaf is not None else None
        if source is None or id(child) in memo or not getattr(source, "supports_ranges", False):
            return LazyInput.of(dtypes.widen(self._value(child, plan, None, memo).to(device=device), work))
        name = plan.name

        def read(start: int, stop: int) -> Any:
            return dtypes.widen(source.read_flat(name, start, stop).to(device=device), work)

        return LazyInput(tuple(source.info(name).shape), work, self.torch.device(device), read)

    def _release(self, op: Op, memo: dict[int, Any], remaining: dict[int, int]) -> None:
        for child in op.inputs:
            remaining[id(child)] -= 1
            if remaining[id(child)] <= 0:
                memo.pop(id(child), None)

    def _combine(self, op: Op, children: list[Op], hypers: dict[str, Any], plan: KeyPlan,
                 region: tuple[int, int] | None, memo: dict[int, Any], remaining: dict[int, int],
                 device: str, work: Any) -> Any:
        """A method declaring ``coefficients``: its inputs added into one buffer, the first input's
        copy. A model whose source can add itself (``add_flat``) is added without being read."""
        method = op.method
        assert method is not None and method.coefficients is not None
        try:
            coefficients = [float(c) for c in method.coefficients(len(children), **hypers)]
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt) and from_signal(error):
                raise
            raise MergeError(f"merge method {method.name!r}: its coefficients failed on key {plan.name!r}: "
                             f"{type(error).__name__}: {error}") from error
        if len(coefficients) != len(children):
            raise MergeError(f"merge method {method.name!r} gave {len(coefficients)} coefficients for "
                             f"{len(children)} inputs at key {plan.name!r}")
        start, stop = region or (0, plan.numel)
        first = self._value(children[0], plan, region, memo)
        total = first.to(device=device, dtype=work, copy=True).contiguous() if first.element_size() > 1 else \
            dtypes.widen(first.to(device=device), work)
        if coefficients[0] != 1:
            total.mul_(coefficients[0])
        flat = total.view(-1)
        for child, coefficient in zip(children[1:], coefficients[1:]):
            source = child.leaf.source if child.leaf is not None else None
            add_flat = getattr(source, "add_flat", None)
            if getattr(source, "adds_to_weights", False) and op.space != MergeSpace.WEIGHT:
                add_flat = None  # a change that depends on the weight it is added to (a DoRA) needs weights
            if add_flat is not None and id(child) not in memo:
                try:
                    add_flat(plan.name, start, stop, flat, coefficient)
                except MechaError:
                    raise
                except Exception as error:
                    raise MergeError(f"{child.leaf.label}: adding its key {plan.name!r} failed: "
                                     f"{type(error).__name__}: {error}") from error
            else:
                value = self._value(child, plan, region, memo)
                # added in its stored dtype, which torch converts on the fly (no converted copy of the
                # input), except float8, which has no addition kernels on CPU
                value = value.to(device=device) if value.element_size() > 1 else dtypes.widen(value.to(device=device), work)
                flat.add_(value.reshape(-1), alpha=coefficient)
        self._release(op, memo, remaining)
        return total

    def _invoke(self, op: Op, args: list[Any], hypers: dict[str, Any], plan: KeyPlan, device: str, work: Any) -> Any:
        method = op.method
        assert method is not None
        context: dict[str, Any] = {"key": plan.name, "device": self.torch.device(device), "dtype": work,
                                   "generator": None, "cache": None}
        if method.wants_generator:
            seed = hypers.get("seed") or 0
            generator = self.torch.Generator(device=device)
            generator.manual_seed((int(seed) * 1_000_003 + zlib.crc32(plan.name.encode())) % (2 ** 63))
            context["generator"] = generator
        if self.options.cache is not None and ("cache" in method.context or method.takes_kwargs):
            with self._lock:
                # shared by calls of this method on the same inputs, whatever their hyperparameters,
                # so that re-merging with another alpha reuses the expensive part
                cache_key = (method.name, op.node.inputs if op.node else id(op), plan.name)
                context["cache"] = self.options.cache.setdefault(cache_key, {})
        try:
            return method.invoke(args, hypers, context)
        except MechaError:
            raise
        except BaseException as error:  # sys.exit() included: a plugin never decides mecha's exit status
            if isinstance(error, KeyboardInterrupt) and from_signal(error):
                raise
            raise MergeError(f"merge method {method.name!r}{_origin(op)} failed on key {plan.name!r}: "
                             f"{type(error).__name__}: {error}") from error


def _origin(op: Op) -> str:
    return f" from plugin {op.provider}" if op.provider else ""


def _is_leaf(op: Op) -> bool:
    return op.leaf is not None


ROW_GROUP = 64  # rows a chunk holds at a time when it can (a LoRA composes its delta 64 rows per matmul)


def _chunk_step(budget: int, plan: KeyPlan) -> int:
    """Elements per chunk: at most `budget`, and whole rows (in groups of ROW_GROUP when the budget
    allows), so that a source composing its tensor row by row (a LoRA's up @ down) computes no row
    twice."""
    row = plan.numel // plan.shape[0] if len(plan.shape) >= 2 and plan.shape[0] else 1
    for unit in (row * ROW_GROUP, row):
        if budget >= unit:
            return budget // unit * unit
    return budget


def _all_finite(torch: Any, tensor: Any) -> bool:
    """Whether a tensor holds no NaN or inf: min and max propagate both, in one pass that allocates
    nothing (``isfinite(x).all()`` builds a boolean tensor of the input's size, then reduces it)."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return True
    if tensor.element_size() == 1:
        return dtypes.float8_all_finite(tensor)
    low, high = dtypes.bounds(tensor)
    return math.isfinite(low) and math.isfinite(high)  # two scalars: no tensor ops


def call_hypers(op: Op, positions: list[int], architecture: Architecture, spec: KeySpec) -> dict[str, Any]:
    """The hyperparameters a method node is called with for one key: block/class values resolved
    for the key, cast to their declared type, per-model values kept for the inputs used."""
    method = op.method
    assert method is not None
    hypers = {h.name: _cast(h.kind, resolve(op.hypers[h.name], architecture, spec))
              if op.hypers.get(h.name) is not None else None for h in method.hypers}
    if len(positions) < len(op.inputs):  # per-model values follow the models left out
        offset = 0 if method.variadic is None else len(method.inputs) - 1
        kept = [i - offset for i in positions if i >= offset]
        for h in method.hypers:
            if h.per_model and hypers[h.name] is not None:
                hypers[h.name] = tuple(hypers[h.name][i] for i in kept)
    return hypers


def _cast(kind: type, value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_cast(kind, v) for v in value)
    if kind is int:
        return int(round(value))
    return kind(value)


def run_plan(plan: MergePlan, sink: Sink, *, threads: int, progress: Progress | None = None) -> KeyRunner:
    """Run every key of the plan into `sink`; on failure or interrupt, stop promptly and re-raise."""
    import torch
    runner = KeyRunner(plan, sink)
    previous_threads = torch.get_num_threads()
    per_worker = max(1, previous_threads // threads)
    # the plan, the registry and torch are tens of thousands of long-lived objects; frozen, the
    # garbage collector stops re-scanning them while each chunk allocates (README, Speed and memory)
    freeze = gc.get_freeze_count() == 0  # a caller's own freeze is left alone
    if freeze:
        gc.freeze()
    try:
        if threads <= 1:
            for key_plan in plan.keys:
                written = runner.run(key_plan)
                if progress:
                    progress(key_plan, written)
            return runner
        # torch's intra-op thread count is per thread (an OpenMP setting): each worker sets its own,
        # else every worker would start as many OpenMP threads as there are cores, and they would
        # spin against each other
        with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="mecha",
                                                   initializer=torch.set_num_threads,
                                                   initargs=(per_worker,)) as pool:
            futures = {pool.submit(runner.run, key_plan): key_plan for key_plan in plan.keys}
            try:
                for future in concurrent.futures.as_completed(futures):
                    written = future.result()
                    if progress:
                        progress(futures[future], written)
            except BaseException:
                runner.cancelled.set()
                for future in futures:
                    future.cancel()
                raise
        return runner
    finally:
        torch.set_num_threads(previous_threads)
        if runner.clamped:
            save = plan.options.save_dtype
            plan.notes.append(f"{sum(runner.clamped.values())} values in {len(runner.clamped)} keys exceeded the "
                              f"{save} range and were clamped to +-{dtypes.FP8_MAX.get(save, 0):g} "
                              f"(e.g. {next(iter(runner.clamped))!r})")
        if freeze:
            gc.unfreeze()
