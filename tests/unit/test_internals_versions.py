"""The private Faust, mode and aiokafka internals storestream mirrors (app/runtime/internals.py):
the installed releases are the checked ones, every named internal still exists, and every
module that mirrors internals names them and the checked releases."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

from app.runtime import internals

ROOT = Path(__file__).resolve().parents[2]

ALL_NAMES = sorted({name for used in internals.MIRRORS.values() for names in used.values()
                    for name in names})


def test_the_installed_releases_were_checked() -> None:
    # On an upgrade this fails with one line per module to re-check (see the next test).
    found = internals.problems()
    assert not found, "\n".join(found)


def test_an_unchecked_release_names_the_module_package_and_both_versions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version

    def fake(distribution: str) -> str:
        return "0.15.0" if distribution == "aiokafka" else real(distribution)

    monkeypatch.setattr(importlib.metadata, "version", fake)
    with pytest.raises(internals.UncheckedInternals) as raised:
        internals.check()
    lines = str(raised.value).splitlines()
    assert {line.split()[0] for line in lines} == {
        module for module, used in internals.MIRRORS.items() if "aiokafka" in used}
    transport = next(line for line in lines if line.startswith("app/runtime/transport.py "))
    assert transport.startswith(
        "app/runtime/transport.py mirrors aiokafka internals checked against 0.14.0; "
        "installed 0.15.0: re-check ")
    assert "aiokafka.consumer.fetcher.Fetcher._records" in transport
    assert "faust" not in transport  # only the package whose release is unchecked
    assert transport.endswith(
        "then add the version to CHECKED['aiokafka'] in app/runtime/internals.py")


def test_a_package_that_is_not_installed_is_reported() -> None:
    installed = {**internals.installed_versions(), "mode-streaming": None}
    found = internals.problems(installed)
    assert found
    assert all(" mirrors mode-streaming internals checked against 0.7.1; installed none: "
               in line for line in found)


def test_the_checked_releases_include_the_pins() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for distribution, releases in internals.CHECKED.items():
        pinned = [pin.split("==")[1] for pin in pins if pin.startswith(f"{distribution}==")]
        assert pinned and pinned[0] in releases, (distribution, pinned, releases)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_each_mirrored_internal_still_exists(name: str) -> None:
    assert internals.missing(name) is None


def test_a_vanished_internal_is_reported() -> None:
    assert internals.missing("aiokafka.consumer.fetcher.Fetcher._no_such_thing") == (
        "aiokafka.consumer.fetcher.Fetcher._no_such_thing: aiokafka.consumer.fetcher.Fetcher "
        "has no _no_such_thing")
    assert "has no Nothing" in str(internals.missing("faust.transport.consumer.Nothing.x"))
    assert "cannot be imported" in str(internals.missing("no_such_package.Class.attr"))
    # an attribute set in a constructor (self._consumer = ...) counts as existing
    assert internals.missing(
        "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._consumer") is None


def test_names_belong_to_their_package() -> None:
    for module, used in internals.MIRRORS.items():
        assert (ROOT / module).is_file(), module
        for distribution, names in used.items():
            assert distribution in internals.CHECKED, (module, distribution)
            top = internals.IMPORT_NAMES[distribution]
            assert all(name.split(".")[0] == top for name in names), (module, distribution)


@pytest.mark.parametrize("module", sorted(internals.MIRRORS))
def test_each_module_still_uses_what_it_is_listed_for(module: str) -> None:
    source = (ROOT / module).read_text()
    for names in internals.MIRRORS[module].values():
        for name in names:
            assert re.search(rf"\b{re.escape(name.rsplit('.', 1)[1])}\b", source), (
                f"{module} no longer mentions {name}: remove it from MIRRORS")


APP_MODULES = sorted(module for module in internals.MIRRORS
                     if module.startswith(("app/", "tables/")))


@pytest.mark.parametrize("module", APP_MODULES)
def test_each_app_module_docstring_names_its_internals_and_the_checked_releases(
        module: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / module).read_text())) or ""
    flat = " ".join(doc.split())
    assert "app/runtime/internals.py" in flat
    for distribution, names in internals.MIRRORS[module].items():
        for release in internals.CHECKED[distribution]:
            assert f"{distribution} {release}" in flat, (module, distribution, release)
        for name in names:
            owner_and_attribute = ".".join(name.split(".")[-2:])
            assert owner_and_attribute in flat, (module, name)
