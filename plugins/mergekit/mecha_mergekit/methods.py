"""Which mecha-methods method runs each mergekit method, and how their parameters correspond.

Each entry was checked against mergekit 0.1.5's source; the tests compare the outputs with mergekit
itself. Parameters keep mergekit's defaults (written into the recipe explicitly, so a recipe means
the same whatever mecha-methods' defaults are).
"""

from __future__ import annotations

import dataclasses
from typing import Any

REQUIRED = "required"  # the base is the method's first input, apart from the models
OPTIONAL = "optional"  # with a base: the method runs on the task vectors, added back to the base
JOINS = "joins"  # a base not among the models joins them as one more model (mergekit's linear, karcher)


@dataclasses.dataclass(frozen=True)
class MethodMap:
    """A mergekit method in mecha terms.

    `per_model`/`shared`: mergekit parameter -> (mecha hyperparameter, mergekit default or None when
    mergekit requires it). `must_be`: mergekit parameters mecha's method has no counterpart of,
    accepted only at the value that changes nothing. `fixed`: mecha hyperparameters set so that the
    method computes what mergekit does. `no_effect`: parameters mergekit accepts that change no value.
    """

    mecha: str
    base: str
    per_model: dict[str, tuple[str, Any]] = dataclasses.field(default_factory=dict)
    shared: dict[str, tuple[str, Any]] = dataclasses.field(default_factory=dict)
    must_be: dict[str, Any] = dataclasses.field(default_factory=dict)
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    no_effect: tuple[str, ...] = ()
    min_models: int = 1
    max_models: int | None = None

    def parameter_names(self) -> list[str]:
        return sorted({*self.per_model, *self.shared, *self.must_be, *self.no_effect})


def _task_arithmetic_family(mecha: str, *, normalize: bool, rescale: bool | None, extra: dict[str, Any]) -> MethodMap:
    """mergekit's generalized task arithmetic; rescale None: the mecha method has no rescale (only false)."""
    per_model = {"weight": ("weight", None), **{name: (name, default) for name, default in extra.items()}}
    shared = {"normalize": ("normalize", normalize), "lambda": ("lambda_", 1.0)}
    must_be: dict[str, Any] = {}
    if rescale is None:
        must_be["rescale"] = False
    else:
        shared["rescale"] = ("rescale", rescale)
    if "density" not in extra:
        must_be["density"] = 1.0
    return MethodMap(mecha, REQUIRED, per_model, shared, must_be, no_effect=("int8_mask",))


METHODS: dict[str, MethodMap] = {
    "linear": MethodMap("linear", JOINS, {"weight": ("weight", None)}, {"normalize": ("normalize", True)}),
    "task_arithmetic": _task_arithmetic_family("task_arithmetic", normalize=False, rescale=None, extra={}),
    "ties": _task_arithmetic_family("ties_merge", normalize=True, rescale=None, extra={"density": 1.0}),
    "dare_ties": _task_arithmetic_family("dare_ties", normalize=False, rescale=True, extra={"density": 1.0}),
    "dare_linear": _task_arithmetic_family("dare", normalize=False, rescale=True, extra={"density": 1.0}),
    "breadcrumbs": _task_arithmetic_family("breadcrumbs", normalize=False, rescale=None,
                                           extra={"density": 1.0, "gamma": 0.01}),
    "breadcrumbs_ties": _task_arithmetic_family("breadcrumbs_ties", normalize=False, rescale=None,
                                                extra={"density": 1.0, "gamma": 0.01}),
    "della": _task_arithmetic_family("della", normalize=True, rescale=True, extra={"density": 1.0, "epsilon": 0.15}),
    "della_linear": _task_arithmetic_family("della_linear", normalize=False, rescale=True,
                                            extra={"density": 1.0, "epsilon": 0.15}),
    "sce": MethodMap("sce", REQUIRED, shared={"select_topk": ("select_topk", 1.0)}, no_effect=("int8_mask",)),
    "model_stock": MethodMap("model_stock", REQUIRED, shared={"filter_wise": ("filter_wise", False)}, min_models=2),
    "karcher": MethodMap("karcher", JOINS, shared={"max_iter": ("max_iter", 10), "tol": ("tol", 1e-5)}),
    # mergekit's slerp is NuSLERP's formula at t (the tensors themselves along their great circle);
    # mecha's slerp is sd-mecha's (directions and norms apart). weight=[1 - t, t] gives t.
    "slerp": MethodMap("nuslerp", REQUIRED, shared={"t": ("t", None)}, fixed={"nuslerp_flatten": True},
                       min_models=1, max_models=1),
    "nuslerp": MethodMap("nuslerp", OPTIONAL, {"weight": ("weight", None)},
                         {"nuslerp_flatten": ("nuslerp_flatten", True), "nuslerp_row_wise": ("nuslerp_row_wise", False)},
                         min_models=2, max_models=2),
    # mergekit 0.1.5 takes one tangent step whose weighted sum is zero: the normalised weighted mean of
    # the directions (mecha's multislerp with no iteration), times the weighted mean norm.
    "multislerp": MethodMap("multislerp", OPTIONAL, {"weight": ("weight", None)},
                            {"normalize_weights": ("normalize_weights", True), "eps": ("eps", 1e-8)},
                            fixed={"max_iter": 0}),
    "passthrough": MethodMap("", JOINS, must_be={"scale": None}, max_models=1),
}
