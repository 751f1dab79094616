"""The preflight's one read of a host (plugins/filter/bundle.py: host_state, units_up,
units_enabled, units_masked), on the output its command prints (playbooks/preflight.yml). The
cluster test test_what_was_changed_by_hand_is_put_back runs it against the lab's hosts."""

from __future__ import annotations

from pathlib import Path

from adhoc import load_plugin

bundle = load_plugin("plugins/filter/bundle.py")

READ = """#dpkg
ii redis-server
rc old-package
ii prometheus-node-exporter
#passwd
root:x:0:0:root:/root:/bin/bash
celery:x:999:997::/var/lib/celery:/usr/sbin/nologin
prometheus:x:998:996:Prometheus:/var/lib/prometheus:/usr/sbin/nologin
#group
root:x:0:
celery:x:997:
prometheus:x:996:
#units
Id=redis-server.service
ActiveState=active
UnitFileState=enabled

Id=redis-server@results.service
ActiveState=failed
UnitFileState=enabled

Id=nftables.service
ActiveState=inactive
UnitFileState=enabled

Id=prometheus-redis-exporter.service
ActiveState=inactive
UnitFileState=masked

Id=celery-workers.target
ActiveState=active
UnitFileState=disabled

#nft
table inet firewall
"""


def test_packages_installed_only() -> None:
    assert bundle.host_state(READ)["packages"] == ["redis-server", "prometheus-node-exporter"]


def test_accounts_with_their_primary_group_by_name() -> None:
    accounts = bundle.host_state(READ)["accounts"]
    assert accounts["celery"] == {
        "group": "celery",
        "home": "/var/lib/celery",
        "shell": "/usr/sbin/nologin",
    }
    assert set(accounts) == {"root", "celery", "prometheus"}


def test_units_up_only_when_active_and_enabled() -> None:
    units = bundle.host_state(READ)["units"]
    assert bundle.units_up(["redis-server"], units)  # a bare name is a .service
    assert bundle.units_up(["redis-server.service"], units)
    assert not bundle.units_up(["redis-server", "redis-server@results"], units)  # failed
    assert not bundle.units_up(["nftables.service"], units)  # enabled, not running
    assert not bundle.units_up(["celery-workers.target"], units)  # running, not enabled
    assert not bundle.units_up(["absent.service"], units)
    assert not bundle.units_up(["redis-server"], None)  # no read: the step runs


def test_units_enabled_and_masked() -> None:
    units = bundle.host_state(READ)["units"]
    assert bundle.units_enabled(["nftables.service"], units)
    assert not bundle.units_enabled(["celery-workers.target"], units)
    assert bundle.units_masked(["prometheus-redis-exporter.service"], units)
    assert not bundle.units_masked(["nftables.service"], units)
    assert not bundle.units_masked(["prometheus-redis-exporter.service"], None)


def test_account_is_every_field_given() -> None:
    accounts = bundle.host_state(READ)["accounts"]
    want = {"group": "celery", "home": "/var/lib/celery", "shell": "/usr/sbin/nologin"}
    assert bundle.account_is(accounts, "celery", want)
    assert bundle.account_is(accounts, "prometheus", {"shell": "/usr/sbin/nologin"})
    assert not bundle.account_is(accounts, "celery", {**want, "shell": "/bin/bash"})
    assert not bundle.account_is(accounts, "absent", {"shell": "/usr/sbin/nologin"})
    assert not bundle.account_is(None, "celery", want)  # no read: the step runs


def test_an_empty_read_finds_nothing() -> None:
    assert bundle.host_state("") == {
        "packages": [],
        "accounts": {},
        "units": {},
        "nft_tables": [],
        "python": "",
        "current": "",
        "writable": [],
        "paths": [],
        "files": {},
    }


def test_the_managed_files() -> None:
    """stat's `%F:%a:%U:%G:%n` and sha256sum's lines of the paths bundle_files lists: a file or a
    directory is kept, anything else (a link, a name sha256sum had to escape) is left to the
    module."""
    digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    read = "\n".join(
        [
            "#files",
            "regular file:640:root:celery:/etc/celery/app.env",
            "regular empty file:600:root:root:/etc/empty",
            "directory:750:root:prometheus:/etc/prometheus",
            "symbolic link:777:root:root:/etc/link",
            "#sha256",
            f"{digest}  /etc/celery/app.env",
            f"{digest}  /etc/empty",
            f"\\{digest}  /etc/odd\\nname",
        ]
    )
    files = bundle.host_state(read)["files"]
    assert files == {
        "/etc/celery/app.env": {
            **{"type": "file", "mode": 0o640, "owner": "root", "group": "celery"},
            "sha256": digest,
        },
        "/etc/empty": {
            **{"type": "file", "mode": 0o600, "owner": "root", "group": "root"},
            "sha256": digest,
        },
        "/etc/prometheus": {
            **{"type": "directory", "mode": 0o750, "owner": "root", "group": "prometheus"},
            "sha256": "",
        },
    }


def test_nft_tables() -> None:
    assert bundle.host_state(READ)["nft_tables"] == ["table inet firewall"]


def test_the_app_roles_reads(tmp_path: Path) -> None:
    """The interpreter, the release in service and the files the app's roles would find: parsed
    from what python3, readlink and `stat -c '%Y %n'` print (stat run here for real)."""
    import subprocess

    installed = tmp_path / "0.1.0-abc" / ".installed"
    installed.parent.mkdir()
    installed.write_text("0.1.0-abc\n")
    env = tmp_path / "worker-pricing.env"
    env.write_text("")
    stat = subprocess.run(
        ["stat", "-c", "%Y %n", str(installed), str(env)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    read = f"#python\n3.11.2 x86_64 2.36\n#current\n/opt/celery/releases/0.1.0-abc\n#paths\n{stat}"
    state = bundle.host_state(read)
    assert state["python"] == "3.11.2 x86_64 2.36"
    assert state["current"] == "/opt/celery/releases/0.1.0-abc"
    assert state["paths"] == [
        {"path": str(installed), "mtime": int(installed.stat().st_mtime)},
        {"path": str(env), "mtime": int(env.stat().st_mtime)},
    ]
    # A bare host: the sections are there, empty (readlink and stat found nothing).
    bare = bundle.host_state("#python\n3.11.2 x86_64 2.36\n#current\n#paths\n#writable\n")
    assert (bare["current"], bare["paths"], bare["writable"]) == ("", [], [])
    writable = bundle.host_state("#writable\n/proc/sys/vm/overcommit_memory\n")["writable"]
    assert writable == ["/proc/sys/vm/overcommit_memory"]
    assert bundle.host_state(READ)["python"] == ""  # no section: the role reads it itself
