"""The plugin loader: broken plugins are reported by name and the rest keeps working; conflicts are errors."""

from __future__ import annotations

import json
import re
import sys
import warnings

import pytest

from mecha_core import PluginError
from mecha_core.cli import main
from mecha_core.plugins import PluginWarning, load_plugins, using_plugins

from .conftest import Install


def method_plugin(method: str) -> str:
    """The source of a plugin providing one merge method, `method`, that adds its two inputs."""
    return f'''
        from mecha_core import Same, hookimpl, merge_method

        @merge_method
        def {method}(a: Same, b: Same) -> Same:
            """a + b"""
            return a + b

        @hookimpl
        def mecha_merge_methods():
            return [{method}]
        '''


BOOM = "raise RuntimeError('boom at import')"

MISSPELLED = """
    from mecha_core import hookimpl

    @hookimpl
    def mecha_merge_method():
        return []
    """

RAISING = """
    from mecha_core import Architecture, Component, KeySpec, hookimpl

    ARCH = Architecture("raising_arch", (Component("c", ("b",)),),
                        lambda: [KeySpec("w", (2,), component="c", blocks=("b",))])

    @hookimpl
    def mecha_architectures():
        return [ARCH]

    @hookimpl
    def mecha_merge_methods():
        raise ValueError("the method table is missing")
    """


@pytest.fixture(autouse=True)
def _all_plugins_allowed(monkeypatch):
    """The suite hides installed plugins with MECHA_LOAD_PLUGINS=""; these tests pass their own."""
    monkeypatch.delenv("MECHA_LOAD_PLUGINS", raising=False)


def messages(caught: pytest.WarningsRecorder) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]


def test_a_plugin_that_fails_to_import_is_one_warning_and_the_rest_loads(install: Install):
    bad = install("bad", BOOM)
    good = install("good", method_plugin("good_add"))
    with pytest.warns(PluginWarning) as caught:
        plugins = load_plugins(entry_points=[bad, good])
    assert messages(caught) == ["plugin 'bad' (mecha-bad 1.0) failed: cannot import mecha_test_bad: "
                                "RuntimeError: boom at import"]
    assert list(plugins.merge_methods) == ["good_add"]
    assert plugins.failed() == ["bad"]
    assert plugins.records["good"].status == "active"
    assert (plugins.records["good"].distribution, plugins.records["good"].version) == ("mecha-good", "1.0")


def test_a_misspelled_hook_is_reported_with_the_right_name(install: Install):
    typo = install("typo", MISSPELLED)
    with pytest.warns(PluginWarning) as caught:
        plugins = load_plugins(entry_points=[typo])
    expected = ("failed: invalid hook implementation: unknown hook 'mecha_merge_method'; "
                "did you mean 'mecha_merge_methods'?")
    assert plugins.records["typo"].status == expected
    assert messages(caught) == [f"plugin 'typo' (mecha-typo 1.0) {expected}"]
    assert plugins.manager.get_plugin("typo") is None  # nothing of it stays registered


def test_a_hook_function_without_hookimpl_is_reported(install: Install):
    bare = install("bare", "def mecha_merge_methods():\n    return []\n")
    with pytest.warns(PluginWarning):
        plugins = load_plugins(entry_points=[bare])
    assert plugins.records["bare"].status == ("failed: implements no mecha hook: decorate mecha_merge_methods "
                                              "with @mecha_core.hookimpl")


def test_a_hook_that_raises_fails_its_plugin_when_first_used(install: Install):
    raising = install("raising", RAISING)
    good = install("good", method_plugin("good_add"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading calls no hook: nothing to report yet
        plugins = load_plugins(entry_points=[raising, good])
    assert "raising_arch" in plugins.architectures
    with pytest.warns(PluginWarning) as caught:
        assert list(plugins.merge_methods) == ["good_add"]
    assert messages(caught) == ["plugin 'raising' (mecha-raising 1.0) failed: mecha_merge_methods() raised "
                                "ValueError: the method table is missing"]
    # a failed plugin provides nothing, whatever was asked of it first
    assert "raising_arch" not in plugins.architectures
    assert plugins.records["raising"].provides == {}
    assert plugins.records["good"].provides == {"merge_methods": ["good_add"]}


def test_a_hook_returning_plain_functions_says_how_to_fix_it(install: Install):
    plain = install("plain", """
        from mecha_core import hookimpl

        def average(a, b):
            return (a + b) / 2

        @hookimpl
        def mecha_merge_methods():
            return [average]
        """)
    plugins = load_plugins(entry_points=[plain])
    with pytest.warns(PluginWarning, match=r"mecha_merge_methods\(\) returned <function average at .*>, expected "
                                           r"MergeMethod objects \(decorate it with @mecha_core.merge_method\)$"):
        assert len(plugins.merge_methods) == 0


def test_two_plugins_with_one_method_name_are_an_error_naming_both(install: Install):
    one = install("one", method_plugin("shared_name"), dist="mecha-one", version="1.2")
    two = install("two", method_plugin("shared_name"), dist="mecha-two", version="0.3")
    plugins = load_plugins(entry_points=[two, one])
    message = ("merge method 'shared_name' is provided by both 'one' (mecha-one 1.2) and 'two' (mecha-two 0.3); "
               "uninstall one of them or limit MECHA_LOAD_PLUGINS")
    for _ in range(2):  # the same answer every time it is asked
        with pytest.raises(PluginError, match=re.escape(message)):
            plugins.merge_methods
    assert plugins.records["one"].provides == {"merge_methods": ["shared_name"]}
    only_two = load_plugins(entry_points=[one, two], allow=["two"])
    assert only_two.provider("merge_methods", "shared_name").name == "two"


def test_two_distributions_with_one_plugin_name_keep_the_first(install: Install):
    first = install("first", method_plugin("first_m"), dist="mecha-first", plugin="same")
    second = install("second", method_plugin("second_m"), dist="mecha-second", plugin="same")
    with pytest.warns(PluginWarning) as caught:
        plugins = load_plugins(entry_points=[first, second])
    assert messages(caught) == ["plugin 'same' (mecha-second 1.0) failed: the plugin name 'same' is already "
                                "taken by 'same' (mecha-first 1.0)"]
    assert list(plugins.merge_methods) == ["first_m"]


def test_load_plugins_env_is_an_allow_list_of_plugin_or_distribution_names(install: Install, monkeypatch):
    entry_points = [install("alpha", method_plugin("alpha_m")), install("beta", method_plugin("beta_m")),
                    install("broken", BOOM)]
    for value, loaded in (("alpha", ["alpha"]), ("", []), (" mecha-beta , ", ["beta"]), ("alpha,beta", ["alpha", "beta"])):
        monkeypatch.setenv("MECHA_LOAD_PLUGINS", value)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plugins = load_plugins(entry_points=entry_points)
        assert sorted(plugins.records) == sorted(["core", *loaded]), value
    assert "mecha_test_broken" not in sys.modules  # a plugin left out is never imported
    monkeypatch.setenv("MECHA_LOAD_PLUGINS", "alpha,gamma")
    with pytest.warns(PluginWarning, match="^MECHA_LOAD_PLUGINS names plugins that are not installed: gamma$"):
        load_plugins(entry_points=entry_points)
    monkeypatch.delenv("MECHA_LOAD_PLUGINS")
    with pytest.warns(PluginWarning, match="'broken'"):
        assert sorted(load_plugins(entry_points=entry_points).records) == ["alpha", "beta", "broken", "core"]


def test_strict_mode_makes_a_broken_plugin_an_error_naming_it(install: Install, monkeypatch):
    good, bad = install("good", method_plugin("good_add")), install("bad", BOOM)
    monkeypatch.setenv("MECHA_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=re.escape("plugin 'bad' (mecha-bad 1.0) failed: cannot import "
                                                    "mecha_test_bad: RuntimeError: boom at import "
                                                    "(MECHA_STRICT_PLUGINS is set)")):
        load_plugins(entry_points=[good, bad])
    plugins = load_plugins(entry_points=[good, install("raising", RAISING)])
    with pytest.raises(PluginError, match="plugin 'raising' .* raised ValueError"):
        plugins.merge_methods
    for off in ("0", "false", "no", ""):
        monkeypatch.setenv("MECHA_STRICT_PLUGINS", off)
        with pytest.warns(PluginWarning, match="'bad'"):
            load_plugins(entry_points=[good, bad])


def test_registering_a_taken_name_leaves_the_first_plugin_in_place(install: Install):
    plugins = load_plugins(entry_points=[install("good", method_plugin("good_add"))], strict=False)
    with pytest.warns(PluginWarning, match="^plugin name 'good' is already taken by 'good' \\(mecha-good 1.0\\)"):
        plugins.register(object(), "good")
    assert plugins.records["good"].status == "active"
    assert list(plugins.merge_methods) == ["good_add"]
    plugins.strict = True
    with pytest.raises(PluginError, match="already taken"):
        plugins.register(object(), "good")


def test_mecha_plugins_json_works_with_every_kind_of_broken_plugin(install: Install, capsys):
    entry_points = [install("bad", BOOM), install("typo", MISSPELLED), install("raising", RAISING),
                    install("one", method_plugin("shared_name")), install("two", method_plugin("shared_name")),
                    install("good", method_plugin("good_add"))]
    with pytest.warns(PluginWarning):
        plugins = load_plugins(entry_points=entry_points)
        with using_plugins(plugins):
            status = main(["plugins", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    statuses = {row["name"]: row["status"].split(":")[0] for row in report["plugins"]}
    assert statuses == {"core": "active", "bad": "failed", "typo": "failed", "raising": "failed", "one": "active",
                        "two": "active", "good": "active"}
    good = next(row for row in report["plugins"] if row["name"] == "good")
    assert good == {"name": "good", "distribution": "mecha-good", "version": "1.0", "status": "active",
                    "hooks": ["mecha_merge_methods"], "provides": {"merge_methods": ["good_add"]}}
    assert report["error"].startswith("merge method 'shared_name' is provided by both 'one' (mecha-one 1.0) "
                                      "and 'two' (mecha-two 1.0)")
