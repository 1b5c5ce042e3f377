"""An :class:`~mecha_core.explain.Explanation` as text for people and as a Graphviz DOT graph."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .explain import Explanation, RecipeStep, ValueSpan, format_bytes


def render_text(explanation: Explanation) -> str:
    """The recipe tree, the models, the plan, each model's share per block, and the warnings."""
    e = explanation
    lines = [f"recipe ({e.architecture})"]
    files = {m.label: m.file for m in e.models}
    _tree_lines(e.recipe, files, e.components, lines)
    lines += ["", "models"]
    width = max(len(m.label) for m in e.models)
    for m in e.models:
        stored = ", ".join(f"{name} {count}" for name, count in m.dtypes.items())
        note = f"; {m.note}" if m.note else ""
        lines.append(f"  {m.label:<{width}}  {m.file}: {m.architecture}, {m.type} ({m.space} space), "
                     f"{m.keys} tensors ({stored}), {format_bytes(m.bytes)}{note}")
    lines += ["", "plan"]
    p = e.plan
    width = max(len(c.component) for c in p.components)
    for c in p.components:
        parts = [f"{c.merged} merged"] if c.merged else []
        parts += [f"{count} copied from {label}" for label, count in c.copied.items()]
        parts += [f"{c.dropped} dropped (--drop)"] if c.dropped else []
        parts += [f"{c.left_out} left out (no input provides them in the output's space)"] if c.left_out else []
        lines.append(f"  {c.component:<{width}}  {', '.join(parts)}")
    written = ", ".join(f"{name} {count}" for name, count in p.output_dtypes.items())
    lines.append(f"  reads {format_bytes(p.bytes_read)}, writes {format_bytes(p.bytes_written)} "
                 f"(tensors by dtype: {written})")
    lines.append(f"  peak memory {format_bytes(p.peak_memory)}: {p.threads} worker{'s' if p.threads != 1 else ''}, "
                 f"each at most {p.chunk_elements} elements of a chunked key (or a whole smaller key) at "
                 f"{p.bytes_per_element} B an element"
                 + (f" (a whole key at {p.whole_key_bytes_per_element} B: {', '.join(p.lazy_methods)} "
                    f"read{'s' if len(p.lazy_methods) == 1 else ''} models range by range)"
                    if p.whole_key_bytes_per_element != p.bytes_per_element else "")
                 + f", plus {format_bytes(p.writer_buffers)} of output buffers")
    lines += ["", "shares (each term's coefficient in the result)"]
    for component, blocks in e.components.items():
        rows = _share_rows(e, component, blocks)
        pad = " " * len(component)
        lines.extend(f"  {component if index == 0 else pad} {row}" for index, row in enumerate(rows))
    for stop in e.stops:
        lines.append(f"  the share stops at {stop}: not a linear method, its result is one term")
    if e.key_shares:
        lines.append(f"  {len(e.key_shares)} keys take other shares than their block's:")
        for key_share in e.key_shares[:10]:
            lines.append(f"    {key_share.key}: {linear_form(key_share.coefficients)} ({key_share.reason})")
        if len(e.key_shares) > 10:
            lines.append(f"    ... {len(e.key_shares) - 10} more (--json lists them all)")
    lines += ["", "warnings"]
    lines += [f"  {warning}" for warning in e.warnings]
    return "\n".join(lines) + "\n"


def _share_rows(e: Explanation, component: str, blocks: Sequence[str]) -> list[str]:
    """The component's rows: its blocks, then the class overrides, classes sharing the same
    blocks and coefficients on one row."""
    rows = [f"{_where(s.blocks, blocks, None)}: {linear_form(s.coefficients)}"
            for s in e.shares if s.component == component and s.class_ is None]
    classes: dict[tuple[Any, ...], list[str]] = {}
    for share in e.shares:
        if share.component == component and share.class_ is not None:
            classes.setdefault((share.blocks, tuple(share.coefficients.items())), []).append(share.class_)
    for (run, coefficients), names in classes.items():
        where = block_ranges(run, blocks) if run else "keys in no block"
        rows.append(f"class {', '.join(names)} at {where}: {linear_form(dict(coefficients))}")
    return rows


def render_json(explanation: Explanation) -> str:
    return json.dumps(explanation.to_dict(), indent=2) + "\n"


def linear_form(coefficients: Mapping[str, float]) -> str:
    """``0.42 A + 0.33 B - 0.25 C``: the terms with a nonzero coefficient."""
    terms = [(name, value) for name, value in coefficients.items() if value != 0]
    if not terms:
        return "0"
    text = ""
    for index, (name, value) in enumerate(terms):
        sign = "-" if value < 0 else "+"
        if index == 0:
            text = f"{'-' if value < 0 else ''}{abs(value):.4g} {name}"
        else:
            text += f" {sign} {abs(value):.4g} {name}"
    return text


def block_ranges(run: Sequence[str], order: Sequence[str]) -> str:
    """Blocks as ranges of the component's order: ``in0..in5, mid``."""
    position = {name: index for index, name in enumerate(order)}
    ranges: list[list[str]] = []
    for name in run:
        if ranges and position[name] == position[ranges[-1][-1]] + 1:
            ranges[-1].append(name)
        else:
            ranges.append([name])
    return ", ".join(r[0] if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in ranges)


def _where(blocks: Sequence[str], order: Sequence[str], class_: str | None) -> str:
    place = block_ranges(blocks, order) if blocks else ("keys in no block" if order else "all keys")
    return f"class {class_} at {place}" if class_ else place


def _tree_lines(steps: Sequence[RecipeStep], files: Mapping[str, str], components: Mapping[str, list[str]],
                lines: list[str]) -> None:
    """The steps as an indented tree from the result down (a step used twice is shown twice)."""
    stack: list[tuple[RecipeStep, str]] = [(steps[-1], "  ")]
    while stack:
        current, pad = stack.pop()
        if current.model is not None:
            lines.append(f"{pad}{current.model}  {files.get(current.model, '')}")
            continue
        shown = ", ".join(f"{k}={'by block' if _by_block(v) else _value(v)}" for k, v in current.hypers.items())
        kind = "" if current.linear else "  [not linear: shares stop here]"
        lines.append(f"{pad}{current.method}({shown}){kind}")
        for name, value in current.hypers.items():
            if _by_block(value):
                lines.extend(f"{pad}    {row}" for row in _hyper_rows(name, value, components))
        stack.extend((steps[i], pad + "  ") for i in reversed(current.inputs))


def _by_block(value: Any) -> bool:
    """A block/class dict's spans, or a per-model list holding some."""
    return isinstance(value, list) and any(isinstance(v, (ValueSpan, list)) for v in value)


def _hyper_rows(name: str, value: list[Any], components: Mapping[str, list[str]]) -> list[str]:
    if isinstance(value[0], ValueSpan):
        return [f"{name}: {row}" for row in _span_rows(value, components)]
    rows = []
    for index, item in enumerate(value):  # one value per model
        if isinstance(item, list):
            rows.extend(f"{name}[{index}]: {row}" for row in _span_rows(item, components))
        else:
            rows.append(f"{name}[{index}]: {_value(item)}")
    return rows


def _span_rows(spans: Sequence[ValueSpan], components: Mapping[str, list[str]]) -> list[str]:
    rows: dict[str, list[str]] = {}
    for span in spans:
        order = components.get(span.component, [])
        where = _where(span.blocks, order, span.class_)
        rows.setdefault(span.component, []).append(f"{where} {_value(span.value)}")
    return [f"{component} {' | '.join(parts)}" for component, parts in rows.items()]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def render_dot(explanation: Explanation) -> str:
    """The recipe in Graphviz DOT: merges as boxes (dashed where the shares stop), models as
    ellipses, inputs pointing at the merge that takes them."""
    e = explanation
    files = {m.label: m.file for m in e.models}
    lines = ["digraph recipe {", "  rankdir=BT;", '  node [fontname="Helvetica"];']
    for index, node in enumerate(e.recipe):
        name = f"n{index}"
        if node.model is not None:
            label = f"{node.model}\\n{_dot_escape(files.get(node.model, ''))}"
            lines.append(f'  {name} [shape=ellipse, label="{label}"];')
        else:
            hypers = "\\n".join(f"{k}={_dot_escape(_value(v))}" if not _by_block(v) else f"{k}: by block"
                                for k, v in node.hypers.items())
            style = "" if node.linear else ', style=dashed'
            label = _dot_escape(node.method or "") + (f"\\n{hypers}" if hypers else "")
            lines.append(f'  {name} [shape=box, label="{label}"{style}];')
        lines.extend(f"  n{i} -> {name};" for i in node.inputs)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
