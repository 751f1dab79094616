"""Every host as deployed: units active and enabled, ports, files, owners, modes, logs, sandbox."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import QUEUES, address_of

testinfra_hosts = ["celery_app"]


def units_of(hostvars: dict[str, Any]) -> list[str]:
    groups = hostvars["group_names"]
    units: list[str] = []
    if "celery_workers" in groups:
        units += ["celery-workers.target"]
        units += [f"celery-worker@{i['name']}.service" for i in hostvars["celery_worker_instances"]]
    if "celery_beat" in groups:
        units.append("celery-beat.service")
    if "flower" in groups:
        units.append("flower.service")
    if "celery_api" in groups:
        units.append("celery-api.service")
    return units


def test_every_unit_active_and_enabled(host: Any, hostvars: dict[str, Any]) -> None:
    units = units_of(hostvars)
    assert units
    for unit in units:
        service = host.service(unit)
        assert service.is_running or unit.endswith(".target"), unit
        assert host.run(f"systemctl is-active {unit}").stdout.strip() == "active", unit
        assert service.is_enabled, unit
    failed = host.run("systemctl --failed --no-legend --plain 'celery*' 'flower*'").stdout
    assert failed.strip() == ""


def test_every_queue_is_consumed_on_each_worker_host(host: Any, hostvars: dict[str, Any]) -> None:
    if "celery_workers" not in hostvars["group_names"]:
        pytest.skip("not a worker host")
    queues: set[str] = set()
    for env in host.file("/etc/celery").listdir():
        if env.startswith("worker-"):
            content = host.file(f"/etc/celery/{env}").content_string
            line = next(x for x in content.splitlines() if x.startswith("CELERY_WORKER_QUEUES="))
            queues |= set(line.split("=", 1)[1].strip('"').split(","))
    assert queues == set(QUEUES)


def test_celery_user_is_a_system_user_without_login(host: Any) -> None:
    user = host.user("celery")
    assert user.exists and user.group == "celery"
    assert user.uid < 1000
    assert user.shell == "/usr/sbin/nologin"
    assert not user.home.startswith("/home")
    assert not host.file("/home/celery").exists


@pytest.mark.parametrize(
    ("path", "owner", "group", "mode"),
    [
        ("/etc/celery", "root", "celery", 0o750),
        ("/etc/celery/app.env", "root", "celery", 0o640),
        ("/var/log/celery", "celery", "celery", 0o750),
        ("/var/lib/celery", "celery", "celery", 0o750),
        ("/opt/celery/releases", "root", "root", 0o755),
        ("/usr/local/sbin/taskctl", "root", "root", 0o755),
        ("/etc/logrotate.d/celery", "root", "root", 0o644),
    ],
)
def test_files_owners_modes(host: Any, path: str, owner: str, group: str, mode: int) -> None:
    f = host.file(path)
    assert f.exists, path
    assert (f.user, f.group, f.mode) == (owner, group, mode), path


def test_env_files_hold_no_secret_for_others(host: Any) -> None:
    for name in host.file("/etc/celery").listdir():
        f = host.file(f"/etc/celery/{name}")
        assert f.mode & 0o007 == 0, name
        if name == "taskctl.env":  # the operator's Redis login: root only, no service reads it
            assert (f.user, f.group, f.mode) == ("root", "root", 0o600), name
        else:
            assert (f.user, f.group) == ("root", "celery"), name


def test_release_is_a_virtualenv_behind_an_atomic_symlink(host: Any) -> None:
    current = host.file("/opt/celery/current")
    assert current.is_symlink
    target = current.linked_to
    assert target.startswith("/opt/celery/releases/")
    assert host.file(f"{target}/.installed").exists
    # The hosts' Python is 3.11.2: async-timeout (python_full_version < '3.11.3') is installed.
    out = host.check_output(f"{target}/bin/pip list --format=freeze --disable-pip-version-check")
    assert "async-timeout==" in out and "celery-bundle==" in out
    assert host.run(f"{target}/bin/pip check --disable-pip-version-check").rc == 0


def test_no_secret_in_units_or_command_lines(host: Any, hostvars: dict[str, Any]) -> None:
    for unit in units_of(hostvars):
        name = "celery-worker@.service" if unit.startswith("celery-worker@") else unit
        text = host.file(f"/etc/systemd/system/{name}").content_string
        assert "PASSWORD" not in text.upper() and "redis://" not in text
    for line in host.check_output("ps -eo args").splitlines():
        if "celery" in line:
            assert "redis://" not in line and "postgresql" not in line and "basic_auth" not in line


def test_worker_unit_stop_semantics(host: Any, hostvars: dict[str, Any]) -> None:
    if "celery_workers" not in hostvars["group_names"]:
        pytest.skip("not a worker host")
    for inst in hostvars["celery_worker_instances"]:
        unit = f"celery-worker@{inst['name']}.service"
        show = host.check_output(
            f"systemctl show {unit} --property=Type,NotifyAccess,WatchdogUSec,KillMode,Restart,"
            "User,TimeoutStopUSec,Environment"
        )
        props = dict(line.split("=", 1) for line in show.splitlines())
        assert (props["Type"], props["NotifyAccess"], props["WatchdogUSec"]) == (
            "notify",
            "main",
            "20s",
        )
        assert props["KillMode"] == "mixed"
        assert props["Restart"] == "always"
        assert props["User"] == "celery"
        # The stop grace + 15 s: a fallback, the stop guard requeues and exits at the grace.
        stop = int(hostvars.get("celery_app_worker_soft_shutdown_timeout", 30)) + 15
        expected = f"{stop}s" if stop < 60 else f"{stop // 60}min {stop % 60}s".replace(" 0s", "")
        assert props["TimeoutStopUSec"] == expected
        # Node name NAME@HOST: Celery's %h reached Celery (written %%h in the unit).
        exec_start = host.check_output(f"systemctl show {unit} --property=ExecStart")
        assert f"--hostname={inst['name']}@%h" in exec_start


def test_sandbox_exposure_at_most_2(host: Any, hostvars: dict[str, Any]) -> None:
    """Each unit's sandbox is the one drop-in (systemd/sandbox.conf), rated at most 2."""
    for unit in units_of(hostvars):
        if unit.endswith(".target"):
            continue
        dropins = host.check_output(f"systemctl show -p DropInPaths --value {unit}")
        template = unit.split("@")[0] + "@.service" if "@" in unit else unit
        assert f"/etc/systemd/system/{template}.d/sandbox.conf" in dropins.split(), dropins
        out = host.check_output(f"systemd-analyze security {unit} --no-pager")
        score = float(out.strip().splitlines()[-1].split(":")[1].split()[0])
        assert score <= 2.0, f"{unit}: exposure {score}"


def test_each_process_writes_its_log_file(host: Any, hostvars: dict[str, Any]) -> None:
    names = []
    if "celery_workers" in hostvars["group_names"]:
        names += [i["name"] for i in hostvars["celery_worker_instances"]]
    if "celery_beat" in hostvars["group_names"]:
        names.append("beat")
    for name in names:
        f = host.file(f"/var/log/celery/{name}.log")
        assert f.exists, f"/var/log/celery/{name}.log"
        assert (f.user, f.group) == ("celery", "celery")
        # A rotation test may just have moved it: the lines are then in NAME.log.1.
        rotated = host.file(f"/var/log/celery/{name}.log.1")
        assert f.size + (rotated.size if rotated.exists else 0) > 0, f"{name}.log is empty"


def test_ports(host: Any, hostvars: dict[str, Any]) -> None:
    address = address_of(host)
    if "flower" in hostvars["group_names"]:
        assert host.socket(f"tcp://{address}:5555").is_listening
        assert not host.socket("tcp://0.0.0.0:5555").is_listening
        assert not host.socket("tcp://127.0.0.1:5555").is_listening
    else:
        assert not host.socket("tcp://0.0.0.0:5555").is_listening
