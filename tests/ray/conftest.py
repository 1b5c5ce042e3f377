"""One local Ray cluster (2 CPUs) for the session; the plugins the merges need, the ray executor among them."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("mecha_ray")
    # a cluster of its own ("local"), whatever other cluster this machine runs or ran
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture
def plugins(mecha_plugins, ray_cluster):
    import mecha_flux
    import mecha_llm
    import mecha_methods
    import mecha_ray
    import mecha_sd1
    for module, name in ((mecha_methods, "methods"), (mecha_sd1, "sd1"), (mecha_llm, "llm"), (mecha_flux, "flux"),
                         (mecha_ray, "ray")):
        mecha_plugins.register(module, name)
    return mecha_plugins
