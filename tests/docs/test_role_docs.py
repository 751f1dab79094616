"""Role READMEs must not drift from the roles.

For every role, `meta/argument_specs.yml` is the list of its variables. `defaults/main.yml` must set
them in the same order (a required secret may have no default), and the table of the README's
`## Variables` section must list exactly them, in the same order. A failure prints the rows to fix.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
# First column of a table row: | `variable` | ...
ROW = re.compile(r"^\|\s*`([A-Za-z0-9_]+)`\s*\|", re.MULTILINE)


def spec_options(role: Path) -> dict[str, dict]:
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]


def role_defaults(role: Path) -> dict:
    return yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}


def readme_variables(text: str) -> list[str]:
    """Variables listed in the table(s) of the README's `## Variables` section, in order."""
    match = re.search(r"^## Variables\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Variables' section"
    return ROW.findall(match.group(1))


def all_roles() -> list[Path]:
    return sorted(p for p in ROLES.iterdir() if (p / "meta" / "argument_specs.yml").is_file())


def test_every_role_is_checked() -> None:
    # Guards the parametrisation below: an empty or wrong roles/ path would pass vacuously.
    names = {p.name for p in all_roles()}
    assert {"redis", "postgresql", "celery_app", "celery_worker", "celery_beat", "flower"} <= names


@pytest.mark.parametrize("role", all_roles(), ids=lambda p: p.name)
def test_defaults_follow_argument_specs(role: Path) -> None:
    options = spec_options(role)
    defaults = list(role_defaults(role))
    # Required variables (the secrets) may be left out of defaults: roles ship no password.
    expected = [name for name in options if name in defaults or not options[name].get("required")]
    assert defaults == expected, (
        f"roles/{role.name}/defaults/main.yml must set the variables of meta/argument_specs.yml, "
        f"in its order (only required ones may be left out)\n"
        f"  unknown to argument_specs: {[v for v in defaults if v not in options]}\n"
        f"  missing from defaults: {[v for v in expected if v not in defaults]}\n"
        f"  argument_specs order: {list(options)}"
    )


@pytest.mark.parametrize("role", all_roles(), ids=lambda p: p.name)
def test_readme_lists_argument_specs(role: Path) -> None:
    readme = role / "README.md"
    assert readme.is_file(), f"roles/{role.name}/README.md is missing"
    options = spec_options(role)
    listed = readme_variables(readme.read_text())
    rows = "\n".join(
        f"| `{name}` | ... | {opt.get('description', '')} |" for name, opt in options.items()
    )
    assert listed == list(options), (
        f"roles/{role.name}/README.md's '## Variables' table drifted from meta/argument_specs.yml\n"
        f"  unknown (not in argument_specs): {[v for v in listed if v not in options]}\n"
        f"  missing: {[v for v in options if v not in listed]}\n"
        f"  expected rows, in this order:\n{rows}"
    )


def test_client_port_defaults_follow_the_servers() -> None:
    # The app's Redis and PostgreSQL ports default to the servers' own (a client role's default
    # mirrors its server's, so `--tags app` needs no data host's facts); the copies must agree.
    app, redis, pg = (role_defaults(ROLES / n) for n in ("celery_app", "redis", "postgresql"))
    tls_or_plain = re.compile(r"\{\{\s*(\d+) if celery_app_redis_tls \| bool else (\d+)\s*\}\}")
    mirrored = {
        "celery_app_redis_port": ("redis_tls_port", "redis_port"),
        "celery_app_redis_result_port": ("redis_results_tls_port", "redis_results_port"),
    }
    for name, (tls, plain) in mirrored.items():
        match = tls_or_plain.fullmatch(app[name])
        assert match, f"celery_app's {name}: not '{{{{ TLS if celery_app_redis_tls ... }}}}'"
        ports = (redis[tls], redis[plain])
        assert tuple(map(int, match.groups())) == ports, f"{name}: {match.groups()}, redis {ports}"
    assert app["celery_app_postgresql_port"] == pg["postgresql_port"]
