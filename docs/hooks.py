"""mkdocs hooks: the build fails on a public name without a docstring, or one missing
from its namespace's API page (`make docs` runs mkdocs in strict mode)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import griffe
from mkdocs.exceptions import PluginError

NAMESPACES = [
    "functional_bp",
    *(
        f"functional_bp.{name}"
        for name in (
            "core per_example statistics curvature feedback training parallel diagnostics "
            "data io activations costs gradcheck params timing"
        ).split()
    ),
]
API_PAGE = {ns: "api/index.md" if ns == "functional_bp" else f"api/{ns.split('.')[1]}.md"
            for ns in NAMESPACES}


def public_names() -> dict[str, list[str]]:
    """Every namespace and the names of its `__all__`."""
    return {ns: list(importlib.import_module(ns).__all__) for ns in NAMESPACES}


def undocumented() -> list[str]:
    """The public names whose docstring is empty, as griffe (mkdocstrings) reads them."""
    package = griffe.load("functional_bp", search_paths=[str(Path(__file__).parent.parent)])
    missing = []
    for ns, names in public_names().items():
        module = package if ns == "functional_bp" else package[ns.split(".", 1)[1]]
        for name in names:
            obj = module[name]
            if not (obj.docstring and obj.docstring.value.strip()):
                missing.append(f"{ns}.{name}")
    return missing


_pages: dict[str, str] = {}


def on_config(config):
    missing = undocumented()
    if missing:
        raise PluginError(f"public names without a docstring: {', '.join(missing)}")
    return config


def on_page_content(html, page, config, files):
    _pages[page.file.src_uri] = html
    return html


def on_post_build(config):
    absent = []
    for ns, names in public_names().items():
        html = _pages.get(API_PAGE[ns], "")
        ids = set(re.findall(r'id="([^"]+)"', html))
        absent += [f"{ns}.{name}" for name in names if f"{ns}.{name}" not in ids]
    if absent:
        raise PluginError(f"public names missing from their API page: {', '.join(absent)}")
