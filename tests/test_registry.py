"""Plugin discovery: isolation of broken plugins, duplicate names, lookups that help."""

import json
import os
import subprocess
import sys

import pytest

from kdcore.errors import KdcoreError
from kdcore.registry import load_registry
from kdcore.testing import make_distribution

GOOD_DISTILLER = """
from kdcore.api import DistillerSpec, hookimpl

@hookimpl
def kdcore_distillers():
    yield DistillerSpec(name="{name}", summary="test distiller", build="fake_mod:build")
"""


def test_builtin_components_are_registered(registry):
    assert {"ce", "mse"} <= set(registry.names("objective"))
    assert "kd" in registry.names("distiller")
    assert "gaussian" in registry.names("dataset")
    assert "mlp" in registry.names("architecture")
    assert all(p.status == "ok" for p in registry.plugins if p.distribution == "kdcore")


def test_plugin_that_fails_to_import_is_reported_and_others_still_work(fake_site):
    make_distribution(fake_site, "fake-broken", "0.3", {"fake_broken": "raise ImportError('missing dependency xyz')"},
                      {"broken": "fake_broken"})
    make_distribution(fake_site, "fake-good", "1.0", {"fake_good": GOOD_DISTILLER.format(name="good-kd")},
                      {"good": "fake_good"})
    registry = load_registry()
    broken = next(p for p in registry.plugins if p.name == "broken")
    assert broken.status == "failed"
    assert broken.distribution == "fake-broken" and broken.version == "0.3"
    assert "missing dependency xyz" in broken.error
    assert registry.get("distiller", "good-kd").provider.distribution == "fake-good"
    assert "kd" in registry.names("distiller")


def test_hook_that_raises_or_yields_wrong_type_marks_plugin_failed(fake_site):
    make_distribution(fake_site, "fake-raises", "1.0", {"fake_raises": """
        from kdcore.api import hookimpl
        @hookimpl
        def kdcore_datasets():
            raise RuntimeError("boom")
            yield
        @hookimpl
        def kdcore_distillers():
            yield "not a spec"
        """}, {"raises": "fake_raises"})
    plugin = next(p for p in load_registry().plugins if p.name == "raises")
    assert plugin.status == "failed"
    assert "kdcore_datasets raised RuntimeError: boom" in plugin.error
    assert "yielded str, expected DistillerSpec" in plugin.error


def test_duplicate_component_names_name_both_providers(fake_site):
    make_distribution(fake_site, "fake-dup", "2.0", {"fake_dup": GOOD_DISTILLER.format(name="kd")}, {"dup": "fake_dup"})
    registry = load_registry()
    with pytest.raises(KdcoreError) as error:
        registry.get("distiller", "kd")
    message = str(error.value)
    assert "distillers (kdcore" in message and "dup (fake-dup 2.0)" in message
    assert [(kind, name) for kind, name, _ in registry.conflicts()] == [("distiller", "kd")]
    assert registry.get("objective", "mse").name == "mse"


def test_unknown_name_lists_available_and_suggests(registry):
    with pytest.raises(KdcoreError, match=r"unknown objective 'mes' \(available: ce, mcmi, mse, soteacher\); did you mean 'mse'\?"):
        registry.get("objective", "mes")


def test_listing_does_not_import_torch_and_reports_json():
    code = (
        "import sys, json, io, contextlib\n"
        "from kdcore.cli import main\n"
        "sys.argv = ['kdcore', 'plugins', '--json']\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try: main()\n"
        "    except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'listing imported torch'\n"
        "print(out.getvalue())\n"
    )
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    data = json.loads(result.stdout)
    names = {(c["kind"], c["name"]) for c in data["components"]}
    assert ("objective", "mse") in names and ("architecture", "mlp") in names
    assert {"name", "distribution", "version", "status", "error"} <= set(data["plugins"][0])


def test_with_component_returns_a_copy_holding_one_more_and_leaves_the_original_alone(registry):
    from kdcore.api import DatasetSpec
    from kdcore.registry import PluginInfo

    spec = DatasetSpec(name="ad-hoc", summary="test", build=lambda params, ctx: None)
    extended = registry.with_component("dataset", spec, PluginInfo("t", "tests", "0"))
    assert extended.get("dataset", "ad-hoc").spec is spec
    assert extended.names("dataset") == sorted([*registry.names("dataset"), "ad-hoc"])
    with pytest.raises(KdcoreError, match="ad-hoc"):
        registry.get("dataset", "ad-hoc")
    again = extended.with_component("dataset", spec, PluginInfo("u", "tests", "0"))
    with pytest.raises(KdcoreError, match="provided by both"):
        again.get("dataset", "ad-hoc")
    assert len(extended.components["dataset"]["ad-hoc"]) == 1
