"""The one definition of a worker instance (filter `celery_worker_resolve`).

Every play that needs a host's instances reads the fact `celery_worker_resolved_instances` that
tasks/resolve.yml sets with this filter: the worker role itself, the preflight, PostgreSQL's
connection sizing, the smoke test and the rolling restart's health gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Keys an instance may set besides those of celery_worker_instance_defaults.
OWN_KEYS = ("name", "queues", "visibility_timeout")


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def resolve(instances: Any, defaults: Mapping[str, Any], visibility_margin: Any) -> list[Any]:
    """Each instance with every key filled: the defaults, then its own keys; plus
    `visibility_timeout` (time_limit + the margin unless set), `processes` (the pool's size:
    autoscale's MAX, else concurrency) and `unknown_keys` (a typo such as `time_limt`).

    Nothing is validated here: the preflight does, naming the field. A value that cannot be
    computed from what the inventory gave is None; an entry that is not a mapping is kept as is.
    """
    out: list[Any] = []
    for instance in instances or []:
        if not isinstance(instance, Mapping):
            out.append(instance)
            continue
        merged = {**defaults, **instance}
        if "visibility_timeout" not in instance:
            limit = _int(merged.get("time_limit"))
            margin = _int(visibility_margin)
            merged["visibility_timeout"] = (
                limit + margin if limit is not None and margin is not None else None
            )
        autoscale = str(merged.get("autoscale") or "").strip()
        merged["processes"] = (
            _int(autoscale.split(",")[0]) if autoscale else _int(merged.get("concurrency"))
        )
        merged["unknown_keys"] = sorted(set(instance) - set(defaults) - set(OWN_KEYS))
        out.append(merged)
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"celery_worker_resolve": resolve}
