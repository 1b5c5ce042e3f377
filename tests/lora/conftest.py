"""The architecture plugins, the method library and mecha-lora, registered in a clean plugin set."""

from __future__ import annotations

import pytest


@pytest.fixture
def plugins(mecha_plugins):
    import mecha_lora
    import mecha_methods
    import mecha_sd1
    import mecha_sd3
    import mecha_sdxl
    for module, name in ((mecha_sd1, "sd1"), (mecha_sdxl, "sdxl"), (mecha_sd3, "sd3"), (mecha_methods, "methods"),
                         (mecha_lora, "lora")):
        mecha_plugins.register(module, name)
    return mecha_plugins
