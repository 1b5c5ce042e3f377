"""The SD and FLUX.1 architecture plugins and the method library, registered in a clean plugin set."""

from __future__ import annotations

import pytest


@pytest.fixture
def plugins(mecha_plugins):
    import mecha_flux
    import mecha_methods
    import mecha_sd1
    import mecha_sd3
    import mecha_sdxl
    mecha_plugins.register(mecha_methods, "methods")
    mecha_plugins.register(mecha_sd1, "sd1")
    mecha_plugins.register(mecha_sdxl, "sdxl")
    mecha_plugins.register(mecha_sd3, "sd3")
    mecha_plugins.register(mecha_flux, "flux")
    return mecha_plugins
