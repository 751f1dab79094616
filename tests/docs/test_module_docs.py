"""The bundle's own modules must document what they take.

Each module in plugins/modules has DOCUMENTATION, EXAMPLES and RETURN that Ansible's own reader
parses (ansible-doc and ansible-lint read them; a YAML error there only prints an error), and its
DOCUMENTATION's options say exactly what its ARGUMENT_SPEC takes: names, types, required,
defaults, choices, list elements and suboptions. A failure names the option that differs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.plugin_docs import read_docstring

MODULES = sorted((Path(__file__).resolve().parents[2] / "plugins" / "modules").glob("*.py"))


def _spec_of(path: Path) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location(f"bundle_module_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ARGUMENT_SPEC


def _normal(options: dict[str, Any], doc: bool) -> dict[str, Any]:
    """Both sides in one shape: Ansible's implicit values made explicit."""
    out = {}
    for name, o in options.items():
        sub = o.get("suboptions" if doc else "options")
        out[name] = {
            "type": o.get("type", "str"),
            "required": bool(o.get("required", False)),
            "default": o.get("default"),
            "choices": o.get("choices"),
            "elements": o.get("elements"),
            "suboptions": _normal(sub, doc) if sub else None,
        }
    return out


def _differences(doc: dict, spec: dict, where: str = "") -> list[str]:
    found = []
    for name in sorted(doc.keys() | spec.keys()):
        if name not in spec or name not in doc:
            side = "DOCUMENTATION" if name in doc else "ARGUMENT_SPEC"
            found.append(f"{where}{name}: only in {side}")
            continue
        d, s = doc[name], spec[name]
        for key in ("type", "required", "default", "choices", "elements"):
            if d[key] != s[key]:
                found.append(f"{where}{name}.{key}: documented {d[key]!r}, taken {s[key]!r}")
        if d["suboptions"] or s["suboptions"]:
            found += _differences(d["suboptions"] or {}, s["suboptions"] or {}, f"{where}{name}.")
    return found


def test_every_module_is_checked() -> None:
    # Guards the parametrisation below: a wrong plugins/modules path would pass vacuously.
    assert {p.stem for p in MODULES} >= {"bundle_files", "bundle_pki"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_documentation_parses(path: Path) -> None:
    docs = read_docstring(str(path))
    hint = f"ansible-doc -M plugins/modules {path.stem}"
    assert docs["doc"], f"{path.name}: DOCUMENTATION does not parse (run {hint})"
    assert docs["doc"]["module"] == path.stem
    assert yaml.safe_load(docs["plainexamples"] or "null"), f"{path.name}: no EXAMPLES"
    assert docs["returndocs"], f"{path.name}: RETURN missing or unparsable"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_documentation_says_what_the_module_takes(path: Path) -> None:
    doc = read_docstring(str(path))["doc"] or {}
    found = _differences(_normal(doc.get("options", {}), True), _normal(_spec_of(path), False))
    assert not found, f"{path.name}:\n" + "\n".join(found)
