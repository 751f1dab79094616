"""Action of the `bundle_files` module: skip the remote run when the preflight's read of the host
already shows every entry as asked.

Why: even one module run costs 0.2-0.8 s of a second `site.yml` (a remote Python start over SSH),
and a converged cluster pays it for each of ~26 steps that find nothing to change. The preflight's
one read of each host (playbooks/tasks/host_state.yml) records the type, mode, owner, group and
SHA-256 of every path this module has written there (the module lists them on the host); this
action compares each entry with that read on the controller and runs the module only when one
differs, is missing or was never read. The comparison is the module's own (content, owner, group,
mode), so drift found by the read is repaired as before; what changes is where it is compared.

The read holds for the run: a path is written by one step, once per run, after the read, or by
steps that ask the same of it; a step after something else may have changed its files since the
read (a package's postinst) says `compare_on_host: true` and always runs. Without the read
(`bundle_file_state` undefined: a role's Molecule scenario, an ad-hoc run), the module always
runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from hashlib import sha256
from typing import Any

from ansible.plugins.action import ActionBase


def as_read(entry: Mapping[str, Any], read: Mapping[str, Any]) -> bool:
    """Whether the read of the host (`host_state`'s `files`) shows this entry exactly as asked."""
    seen = read.get(entry.get("path") or "")
    state = entry.get("state") or "file"
    # The read's mode as 4 octal digits against the entry's, zero-padded: a mode the module
    # would refuse ("0o640", "00640", "644x") never matches, so the module runs and names it.
    mode = str(entry.get("mode")).zfill(4)
    want = (state, mode, entry.get("owner") or "root", entry.get("group") or "root")
    if not seen or (seen["type"], f"{seen['mode']:04o}", seen["owner"], seen["group"]) != want:
        return False
    if state == "directory":
        return True
    content = entry.get("content")
    return content is not None and sha256(str(content).encode()).hexdigest() == seen["sha256"]


class ActionModule(ActionBase):
    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        read = (task_vars or {}).get("bundle_file_state")
        files = self._task.args.get("files") or []
        trusted = isinstance(read, Mapping) and not self._task.args.get("compare_on_host")
        if trusted and files and all(as_read(e, read) for e in files):
            result.update(changed=False, changed_paths=[], remote=False)
            return result
        result.update(self._execute_module(module_name="bundle_files", task_vars=task_vars))
        return result
