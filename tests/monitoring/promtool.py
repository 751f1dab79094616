"""promtool, amtool and prometheus from Debian's packages (tools.sh), and checks built on them.

`tools()` runs tests/monitoring/tools.sh once per session (it does nothing when .tools/ is
complete), so `pytest tests/monitoring` works on a fresh Debian 12 machine as root.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
FILES = REPO / "roles" / "prometheus" / "files"
RULES_DIR = FILES / "rules"
RULE_TESTS_DIR = HERE / "rules"
TOOLS_DIR = REPO / ".tools"


@dataclass(frozen=True)
class Tools:
    promtool: Path
    amtool: Path
    prometheus: Path
    console_libraries: Path


@functools.cache
def tools() -> Tools:
    """The binaries, fetched and extracted by tools.sh if they are not there yet."""
    done = subprocess.run(
        ["bash", str(HERE / "tools.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"tests/monitoring/tools.sh failed:\n{done.stdout}\n{done.stderr}")
    found = Tools(
        promtool=TOOLS_DIR / "bin" / "promtool",
        amtool=TOOLS_DIR / "bin" / "amtool",
        prometheus=TOOLS_DIR / "bin" / "prometheus",
        console_libraries=TOOLS_DIR / "console_libraries",
    )
    return found


def run(*argv: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


# Grafana's interval variables become a range; the dashboard's own variables (they stand in
# label matchers: queue_name=~"$queue") match anything.
GRAFANA_INTERVAL = re.compile(r"\$\{?__(rate_interval|interval|range)\}?")
GRAFANA_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?")


def grafana_to_promql(expr: str) -> str:
    return GRAFANA_VARIABLE.sub(".*", GRAFANA_INTERVAL.sub("5m", expr))


def check_exprs(exprs: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on EXPRS (where -> PromQL), written as rules `check:expr_N`."""
    names = list(exprs)
    rules = [{"record": f"check:expr_{i}", "expr": exprs[name]} for i, name in enumerate(names)]
    path = tmp_path / "exprs.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    return run(tools().promtool, "check", "rules", "--lint=none", path)


def where_failed(done: subprocess.CompletedProcess[str], exprs: dict[str, str]) -> str:
    """promtool's output, then where each expression it rejects is from."""
    names = list(exprs)
    lines = [output(done)]
    for index in sorted(
        {int(i) for i in re.findall(r"check:expr_(\d+)", done.stdout + done.stderr)}
    ):
        lines.append(f"check:expr_{index} is {names[index]}: {exprs[names[index]]}")
    return "\n".join(lines)


def recorded_names() -> set[str]:
    """The metric names the rule files record."""
    names = set()
    for path in RULES_DIR.glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names


# A metric name with a colon is a recording rule's (Prometheus convention); one used by the
# dashboard or the console must be recorded by the rule files, or its panel stays empty.
RECORDED = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]*[a-zA-Z0-9_])\b")


def unrecorded(exprs: dict[str, str]) -> dict[str, list[str]]:
    known = recorded_names()
    missing: dict[str, list[str]] = {}
    for where, expr in exprs.items():
        # Range selectors ([5m:1m]) and label values are no metric names.
        stripped = re.sub(r"\[[^\]]*\]|\"[^\"]*\"|'[^']*'", "", expr)
        names = [n for n in RECORDED.findall(stripped) if n not in known]
        if names:
            missing[where] = names
    return missing
