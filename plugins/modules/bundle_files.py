#!/usr/bin/python
"""Ansible module `bundle_files`: a role's small files and directories in one module run.

Why: on a converged host `copy` and `template` cost two remote Python runs per file (a stat, then
`file` for the attributes), about 0.5 s each on the lab; a role with ten files pays ten seconds of
a second `site.yml` to find that nothing changed. This module compares every file's content
(byte for byte) and attributes in one run, writes only those that differ (atomically: a
temporary file in the same directory, then rename) and says which paths changed, so that the
caller restarts only what they belong to (`changed_paths`).

Content comes rendered from the controller (`lookup('template', ...)`, `lookup('file', ...)`).
A file may name a `validate` command (`nft -c -f %s`): run on the new content, before it
replaces the old one; a failure leaves the old file and fails the task. Check mode and diff mode
are supported. Give the task `no_log: true` when a content is secret.

Every path it manages is listed in MANIFEST on the host; the preflight's read of the host gives
their state, and the action (plugins/action/bundle_files.py) skips this run when nothing differs.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

# The paths this module manages on the host, one a line; read by playbooks/tasks/host_state.yml.
MANIFEST = "/var/lib/bundle_files/paths"

DOCUMENTATION = r"""
module: bundle_files
short_description: Write many small files and directories in one module run
description:
  - Each entry, in order, is a directory (created) or a file (written when its content differs).
  - Owner, group and mode are set on each; a difference there is a change too.
options:
  files:
    description: The entries, in order (a directory before the files in it).
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      state:
        description: A file or a directory.
        type: str
        default: file
        choices: [file, directory]
      content:
        description: The file's text (a file only).
        type: str
      owner:
        description: User name.
        type: str
        default: root
      group:
        description: Group name.
        type: str
        default: root
      mode:
        description: Octal mode as a string, like 0640.
        type: str
        required: true
      validate:
        description: Command run on the new file (%s its path) before it replaces the old one.
        type: str
  manifest:
    description: Where the managed paths are listed (a test's own file; the read knows the default).
    type: path
    default: /var/lib/bundle_files/paths
  compare_on_host:
    description:
      - Run on the host even when the preflight's read shows every entry as asked (read by the
        action, plugins/action/bundle_files.py); for a step after something else, such as a
        package's postinst, may have changed its files since the read.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Settings of the service, written only when they differ
  bundle_files:
    files:
      - { path: /etc/celery, state: directory, group: celery, mode: "0750" }
      - path: /etc/celery/app.env
        content: "{{ lookup('template', 'app.env.j2') }}"
        group: celery
        mode: "0640"
  register: _settings
  no_log: true
"""

RETURN = r"""
changed_paths:
  description: The paths written, created or whose owner, group or mode was set.
  type: list
  elements: str
  returned: always
"""


# What DOCUMENTATION describes (tests/docs/test_module_docs.py holds the two together).
ARGUMENT_SPEC: dict[str, Any] = {
    "files": {
        "type": "list",
        "elements": "dict",
        "required": True,
        "options": {
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "default": "file", "choices": ["file", "directory"]},
            "content": {"type": "str"},
            "owner": {"type": "str", "default": "root"},
            "group": {"type": "str", "default": "root"},
            "mode": {"type": "str", "required": True},
            "validate": {"type": "str"},
        },
    },
    "manifest": {"type": "path", "default": MANIFEST},
    "compare_on_host": {"type": "bool", "default": False},  # the action's
}


def _ids(entry: dict[str, Any]) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(entry["owner"]).pw_uid
        gid = grp.getgrnam(entry["group"]).gr_gid
    except KeyError as exc:
        raise ValueError(f"{entry['path']}: no such user or group: {exc}") from exc
    return uid, gid


def _mode(entry: dict[str, Any]) -> int:
    text = str(entry["mode"])
    if not text.isdigit() or len(text) > 4 or any(c in "89" for c in text):
        raise ValueError(f"{entry['path']}: mode must be octal like '0640', got {text!r}")
    return int(text, 8)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _set_attributes(path: str, uid_gid: tuple[int, int], mode: int) -> None:
    os.chown(path, *uid_gid)
    os.chmod(path, mode)


def _settle(path: str, uid_gid: tuple[int, int], mode: int, check: bool) -> bool:
    """Owner, group and mode of a path that exists; True when they differed (and were set)."""
    st = os.stat(path)
    if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (*uid_gid, mode):
        return False
    if not check:
        _set_attributes(path, uid_gid, mode)
    return True


def apply(
    module: AnsibleModule, entry: dict[str, Any], check: bool, diffs: list[dict[str, str]]
) -> bool:
    """Bring one entry to its state; True when it changed (or would, in check mode)."""
    path, uid_gid, mode = entry["path"], _ids(entry), _mode(entry)
    if not os.path.isabs(path):
        raise ValueError(f"{path}: the path must be absolute")
    if entry["state"] == "directory":
        if os.path.isdir(path):
            return _settle(path, uid_gid, mode, check)
        if not check:
            os.makedirs(path, exist_ok=True)
            _set_attributes(path, uid_gid, mode)
        return True
    if entry.get("content") is None:
        raise ValueError(f"{path}: a file needs its content")
    new = entry["content"].encode()
    old = _read(path)
    if old == new:
        return _settle(path, uid_gid, mode, check)
    diffs.append(
        {
            "before_header": path,
            "after_header": path,
            "before": (old or b"").decode(errors="replace"),
            "after": entry["content"],
        }
    )
    if not check:
        directory = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".bundle_files.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(new)
                f.flush()
                os.fsync(f.fileno())
            _set_attributes(tmp, uid_gid, mode)
            if entry.get("validate"):
                _validate(module, entry["validate"], tmp, path)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return True


def _validate(module: AnsibleModule, command: str, tmp: str, path: str) -> None:
    if "%s" not in command:
        raise ValueError(f"{path}: validate must contain %s (the new file), got {command!r}")
    rc, out, err = module.run_command(command.replace("%s", tmp), use_unsafe_shell=False)
    if rc != 0:
        output = (err or out)[:2000]
        raise ValueError(f"{path}: the new content failed `{command}` (rc {rc}): {output}")


def record(manifest: str, paths: list[str]) -> None:
    """Add the paths not yet listed in the manifest (root-only: it maps what the bundle manages).
    An unreadable manifest counts as empty and is written anew."""
    try:
        with open(manifest, encoding="utf-8") as f:
            listed = set(f.read().splitlines())
    except (OSError, ValueError):
        listed = set()
    if set(paths) <= listed:
        return
    directory = os.path.dirname(manifest)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".paths.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{p}\n" for p in sorted(listed | set(paths))))
        os.replace(tmp, manifest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
    )
    changed: list[str] = []
    diffs: list[dict[str, str]] = []
    for entry in module.params["files"]:
        try:
            if apply(module, entry, module.check_mode, diffs):
                changed.append(entry["path"])
        except ValueError as exc:  # the message names the path
            module.fail_json(msg=str(exc), changed_paths=changed)
        except OSError as exc:
            module.fail_json(msg=f"{entry['path']}: {exc}", changed_paths=changed)
    if not module.check_mode:
        try:
            record(module.params["manifest"], [e["path"] for e in module.params["files"]])
        except (OSError, ValueError) as exc:  # the files are right; only a shortcut is lost
            module.warn(
                f"{module.params['manifest']}: not updated ({exc}); the next run looks here"
            )
    result: dict[str, Any] = {"changed": bool(changed), "changed_paths": changed}
    if module._diff and diffs:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
