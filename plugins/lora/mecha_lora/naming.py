"""Which checkpoint key each LoRA module name stands for, in every naming that trainers write.

For an architecture, every conv/linear layer a LoRA can express gets:

- its *kohya* name, the one mecha writes (``lora_unet_...``, ``lora_te_...``/``lora_te1_...``): diffusers
  module names for an SD1 UNet, SGM names for SDXL's (as kohya's sd-scripts write them), the reference
  names for SD3's MMDiT and FLUX.1's transformer, Hugging Face names for text encoders (so the fused
  ``in_proj_weight`` of OpenCLIP is three modules, q, k and v);
- the other spellings it is read under: the other UNet naming, ``unet.``/``text_encoder.`` +
  diffusers/Hugging Face paths (diffusers and PEFT files), ``lycoris_`` + the underscored diffusers
  UNet/MMDiT path (LyCORIS's own wrapper, as SimpleTuner writes), and for SD3 and FLUX.1 ``transformer.``,
  ``base_model.model.`` and ``lora_transformer_`` + diffusers transformer paths (diffusers, AI-Toolkit,
  PEFT, OneTrainer), where a fused layer's q/k/v (FLUX's q/k/v/MLP) are modules of slices of its rows;
  for FLUX.1 also ComfyUI's ``diffusion_model.`` + the checkpoint path.

Text encoders are numbered in the architecture's component order: ``lora_te_`` when there is one,
``lora_te1_``, ``lora_te2_`` otherwise, except T5, always ``lora_te3_`` beside others (SD3's third encoder,
and FLUX.1's second, as kohya and ComfyUI name it). Embeddings, norms,
biases and OpenCLIP's transposed ``text_projection`` have no LoRA name.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Iterable, Iterator

from mecha_core import Architecture, KeySpec

from . import flux_names, mmdit_names, unet_names
from .networks import CLIP, FLUX, LDM_UNET, MMDIT, OPEN_CLIP, T5, TEXT_ENCODERS, Network, find_networks

# kohya's sd-scripts train SDXL on a UNet with the SGM module names; every other LDM UNet (SD1/SD2)
# on diffusers' UNet2DConditionModel, whose names the LoRA then carries.
SGM_NAMED_UNETS = frozenset({"sdxl"})
# OpenCLIP layer (below resblocks.N) -> Hugging Face CLIP layer(s) below text_model.encoder.layers.N
_OPEN_CLIP_LAYERS = {"attn.in_proj_weight": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                     "attn.out_proj.weight": ("self_attn.out_proj",), "mlp.c_fc.weight": ("mlp.fc1",),
                     "mlp.c_proj.weight": ("mlp.fc2",)}
_DIFFUSERS_ATTENTION = {"q_proj": ("to_q",), "k_proj": ("to_k",), "v_proj": ("to_v",), "out_proj": ("to_out", "to_out.0")}
_ATTENTION_PROCESSOR = re.compile(r"^(.*\.attn\d)\.(to_q|to_k|to_v|to_out)(?:\.0)?$")
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


# The naming conventions a module name can be in, by its prefix. kohya-style names (kohya's sd-scripts,
# OneTrainer's ``lora_transformer_``) underscore the module path; LyCORIS's own wrapper (SimpleTuner)
# prefixes ``lycoris_`` to the underscored diffusers path; diffusers and PEFT keep the dotted path; ComfyUI
# writes FLUX LoRAs under ``diffusion_model.`` + the checkpoint's dotted path.
KOHYA, LYCORIS, DIFFUSERS, COMFYUI = "kohya", "LyCORIS", "diffusers/PEFT", "ComfyUI"
_CONVENTIONS = ((KOHYA, ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_")),
                (LYCORIS, ("lycoris_",)),
                (DIFFUSERS, ("unet.", "text_encoder.", "text_encoder_2.", "transformer.", "base_model.model.")),
                (COMFYUI, ("diffusion_model.",)))


def convention(module: str) -> str | None:
    """The naming convention of a module name; None for a name in none of them."""
    return next((name for name, prefixes in _CONVENTIONS if module.startswith(prefixes)), None)


def conventions(modules: Iterable[str]) -> dict[str, list[str]]:
    """Convention -> the module names in it (sorted), for the names in one."""
    found: dict[str, list[str]] = {}
    for module in sorted(modules):
        name = convention(module)
        if name is not None:
            found.setdefault(name, []).append(module)
    return found


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a LoRA module's delta goes: a checkpoint key, or the `rows` rows from `offset` on of it (one of
    q, k, v of a fused projection, FLUX's MLP input in ``linear1``), counted in the architecture's layout
    (a file of shrunk dimensions scales them); `swap`: its two row halves are in the other order."""

    key: str
    offset: int = 0
    rows: int | None = None  # None: the whole key
    swap: bool = False

    def rows_in(self, module_rows: int, layout_rows: int) -> tuple[int, int] | None:
        """(first row, key rows) of a module of `module_rows` rows in a key whose layout has
        `layout_rows`: the slice scaled by the module's rows (a shrunk file); None when they do not fit."""
        if self.rows is None:
            return 0, module_rows
        if (module_rows * layout_rows) % self.rows or (module_rows * self.offset) % self.rows:
            return None
        return module_rows * self.offset // self.rows, module_rows * layout_rows // self.rows

    def slice_of(self, key_rows: int, layout_rows: int) -> tuple[int, int] | None:
        """(first row, rows) of the slice in a key of `key_rows` rows whose layout has `layout_rows`; None
        when the key's rows do not scale the slice to whole rows."""
        if self.rows is None:
            return 0, key_rows
        if (self.offset * key_rows) % layout_rows or (self.rows * key_rows) % layout_rows:
            return None
        return self.offset * key_rows // layout_rows, self.rows * key_rows // layout_rows


@dataclasses.dataclass(frozen=True)
class LoraNames:
    """The LoRA names of one architecture.

    ``targets``: every module name read, under any naming, with where it goes. ``kohya``: for every
    key a LoRA can express, the kohya module names mecha writes for it (one per equal row block). ``peft``:
    the diffusers/PEFT names mecha writes (``--lora-format peft``) for the keys that have them, each with
    the rows of the key it stands for.
    ``trained``: the keys of the layers kohya's LoRA network trains (with conv layers, as LoCon).
    """

    architecture: str
    targets: dict[str, Target]
    kohya: dict[str, tuple[str, ...]]
    trained: tuple[str, ...]
    peft: dict[str, tuple[tuple[str, Target], ...]]

    def nearest(self, name: str) -> str | None:
        """The accepted module name closest to `name`, for error messages."""
        close = difflib.get_close_matches(name, self.targets, n=1, cutoff=0.5)
        return close[0] if close else None

    def written(self, format: str) -> dict[str, tuple[tuple[str, Target], ...]]:
        """Key -> the module names written for it in `format` (``kohya`` or ``peft``), with their rows."""
        if format == "peft":
            return self.peft
        return {key: tuple((name, self.targets[name]) for name in names) for key, names in self.kohya.items()}


class _Builder:
    def __init__(self, architecture: str) -> None:
        self.architecture = architecture
        self.targets: dict[str, Target] = {}
        self.kohya: dict[str, tuple[str, ...]] = {}
        self.trained: list[str] = []
        self.peft: dict[str, tuple[tuple[str, Target], ...]] = {}

    def layer(self, spec: KeySpec, kohya: tuple[str, ...], others: Iterable[tuple[str, Target]], trained: bool,
              peft: tuple[tuple[str, Target], ...] = ()) -> None:
        """A layer: its kohya names (one per equal row block of `spec`), the other names it is read under,
        whether kohya trains it, and its PEFT names."""
        self.kohya[spec.name] = kohya
        if peft:
            self.peft[spec.name] = peft
        for name, target in zip(kohya, equal_blocks(spec, len(kohya))):
            self._add(name, target)
        for name, target in others:
            self._add(name, target)
        if trained:
            self.trained.append(spec.name)

    def _add(self, name: str, target: Target) -> None:
        known = self.targets.setdefault(name, target)
        if known != target:
            raise ValueError(f"architecture {self.architecture!r}: LoRA name {name!r} would stand for both "
                             f"{known.key!r} and {target.key!r}")


def equal_blocks(spec: KeySpec, count: int, swap: bool = False) -> list[Target]:
    """The targets of `count` equal row blocks of a key (the whole key when `count` is 1)."""
    if count == 1:
        return [Target(spec.name, swap=swap)]
    rows = spec.shape[0] // count
    return [Target(spec.name, index * rows, rows, swap) for index in range(count)]


@functools.lru_cache(maxsize=None)
def lora_names(architecture: Architecture) -> LoraNames | None:
    """The LoRA names of an architecture (computed once), or None when it holds no network a LoRA targets."""
    networks = find_networks(architecture)
    if not networks:
        return None
    builder = _Builder(architecture.name)
    encoders = [net for net in networks if net.kind in TEXT_ENCODERS]
    for net in networks:
        if net.kind in TEXT_ENCODERS:
            _text_encoder(builder, net, encoders.index(net), len(encoders))
        elif net.kind == LDM_UNET:
            _unet(builder, net, sgm_named=architecture.name in SGM_NAMED_UNETS)
        elif net.kind == MMDIT:
            _mmdit(builder, net)
        elif net.kind == FLUX:
            _flux(builder, net)
    return LoraNames(architecture.name, builder.targets, builder.kohya, tuple(builder.trained), builder.peft)


def _underscored(path: str) -> str:
    return path.replace(".", "_")


def _text_encoder(builder: _Builder, net: Network, index: int, count: int) -> None:
    # kohya (and ComfyUI) call T5 the third text encoder beside others, whatever comes before it (FLUX: CLIP-L, T5)
    kohya_prefix = "lora_te_" if count == 1 else "lora_te3_" if net.kind == T5 else f"lora_te{index + 1}_"
    peft_prefix = "text_encoder." if index == 0 else f"text_encoder_{index + 1}."
    for spec, paths, trained in _text_layers(net):
        blocks = equal_blocks(spec, len(paths))
        others = [(peft_prefix + name, target) for path, target in zip(paths, blocks)
                  for name in (path, *_diffusers_attention(path))]
        builder.layer(spec, tuple(kohya_prefix + _underscored(p) for p in paths), others, trained,
                      tuple((peft_prefix + path, target) for path, target in zip(paths, blocks)))


def _diffusers_attention(path: str) -> tuple[str, ...]:
    """The names diffusers gives a CLIP attention projection in its older LoRAs (attention processors:
    ``self_attn.to_q_lora``) and their PEFT conversion (``self_attn.to_q``, ``self_attn.to_out.0``)."""
    head, _, layer = path.rpartition(".")
    if not head.endswith("self_attn") or layer not in _DIFFUSERS_ATTENTION:
        return ()
    return tuple(f"{head}.{name}" for name in _DIFFUSERS_ATTENTION[layer])


def _text_layers(net: Network) -> Iterator[tuple[KeySpec, tuple[str, ...], bool]]:
    """(key, its Hugging Face module paths, whether kohya trains it) for the encoder's linear layers:
    those of the transformer layers (attention and MLP), and CLIP's ``text_projection``."""
    for spec in net.specs:
        path = net.relative(spec)
        if net.kind == OPEN_CLIP:
            match = _RESBLOCK.match(path)
            if match and match.group(2) in _OPEN_CLIP_LAYERS:
                layer = f"text_model.encoder.layers.{match.group(1)}."
                yield spec, tuple(layer + name for name in _OPEN_CLIP_LAYERS[match.group(2)]), True
            continue
        if not path.endswith(".weight") or len(spec.shape) != 2:
            continue
        module = path.removesuffix(".weight")
        if net.kind == CLIP and module.startswith("text_model.encoder.layers."):
            yield spec, (module,), True
        elif net.kind == CLIP and module == "text_projection":
            yield spec, (module,), False
        elif net.kind == T5 and module.startswith("encoder.block.") and not module.endswith("relative_attention_bias"):
            yield spec, (module,), True


def _conv_or_linear(net: Network) -> dict[str, KeySpec]:
    """Module path -> key, for the network's conv and linear weights (norms and biases are 1-D)."""
    return {net.relative(s).removesuffix(".weight"): s for s in net.specs
            if s.name.endswith(".weight") and len(s.shape) >= 2}


def _unet(builder: _Builder, net: Network, *, sgm_named: bool) -> None:
    layers = _conv_or_linear(net)
    diffusers = unet_names.diffusers_names(layers)
    for path, spec in layers.items():
        sgm = "lora_unet_" + _underscored(path)
        names = [sgm]
        if path in diffusers:
            names += ["lora_unet_" + _underscored(diffusers[path]), "unet." + diffusers[path],
                      "lycoris_" + _underscored(diffusers[path])]
            processor = _ATTENTION_PROCESSOR.match(diffusers[path])
            if processor:  # older diffusers LoRAs name an attention's processor (attn1.processor.to_q_lora)
                names.append(f"unet.{processor.group(1)}.processor.{processor.group(2)}")
        kohya = sgm if sgm_named or path not in diffusers else names[1]
        trained = path.startswith(("input_blocks.", "middle_block.", "output_blocks.")) and \
            not path.startswith("input_blocks.0.")  # conv_in is not part of kohya's LoRA network
        peft = (("unet." + diffusers[path], Target(spec.name)),) if path in diffusers else ()
        builder.layer(spec, (kohya,), [(n, Target(spec.name)) for n in names if n != kohya], trained, peft)


def _mmdit(builder: _Builder, net: Network) -> None:
    layers = _conv_or_linear(net)
    diffusers = mmdit_names.diffusers_names(layers)
    for path, spec in layers.items():
        paths, swap = diffusers.get(path, ((), False))
        blocks = list(zip(paths, equal_blocks(spec, len(paths), swap)))
        builder.layer(spec, ("lora_unet_" + _underscored(path),), _transformer_names(blocks),
                      path.startswith("joint_blocks."), tuple((f"transformer.{name}", t) for name, t in blocks))


def _transformer_names(blocks: Iterable[tuple[str, Target]]) -> list[tuple[str, Target]]:
    """The names a diffusers transformer's layer (path below ``transformer.``) is read under: diffusers',
    PEFT's, OneTrainer's and LyCORIS's."""
    return [(name, target) for path, target in blocks
            for name in (f"transformer.{path}", f"base_model.model.{path}", f"lora_transformer_{_underscored(path)}",
                         f"lycoris_{_underscored(path)}")]


def _flux(builder: _Builder, net: Network) -> None:
    """FLUX.1's transformer: kohya names its layers ``lora_unet_`` + Black Forest Labs' path (one module for a
    fused ``qkv`` or ``linear1``), ComfyUI ``diffusion_model.`` + that path; diffusers and the trainers
    built on it name the split layers (:mod:`~mecha_lora.flux_names`), each a slice of the fused rows."""
    layers = _conv_or_linear(net)
    diffusers = flux_names.diffusers_names({path: spec.shape for path, spec in layers.items()})
    for path, spec in layers.items():
        slices, swap = diffusers.get(path, ((), False))
        blocks = [(name, Target(spec.name, swap=swap) if rows == spec.shape[0]
                   else Target(spec.name, first, rows, swap)) for name, first, rows in slices]
        others = [(f"diffusion_model.{path}", Target(spec.name)), *_transformer_names(blocks)]
        builder.layer(spec, ("lora_unet_" + _underscored(path),), others,
                      path.startswith(("double_blocks.", "single_blocks.")),
                      tuple((f"transformer.{name}", target) for name, target in blocks))
