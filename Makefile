# The two commands that matter: `make lab` (a working local cluster) and `make test` (every test).
# Each installs what it needs: Debian packages with apt, Python packages into .venv from the locks.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
LAB := $(PY) lab/lab.py
# Molecule scenarios, run in this order by `make test`.
SCENARIOS ?= platform redis postgresql cluster
# Debian packages of the controller: the lab (nspawn hosts), the app tests (real Redis, PostgreSQL),
# the browser that looks at Flower (molecule/cluster/tests/test_flower_browser.py).
APT_PACKAGES := python3-venv debootstrap systemd-container iptables iproute2 openssh-client rsync \
	redis-server postgresql apt-cacher-ng chromium chromium-driver

.PHONY: help deps venv lab lab-summary lab-up test-deploy lab-down lab-status test lint test-docs test-app test-molecule lock clean

help:
	@echo "make lab        bring up the local 4-host lab and deploy the bundle on it"
	@echo "make lab-down   remove the lab"
	@echo "make test       run every test (lint, app tests, Molecule scenarios)"
	@echo "make lock       re-resolve requirements/*.lock from pyproject.toml"

deps:
	@[ "$$(id -u)" = 0 ] || { echo "make: run as root (the lab boots systemd-nspawn hosts and installs Debian packages)" >&2; exit 1; }
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
		echo "==> installing Debian packages: $(APT_PACKAGES)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); }

# The virtualenv is rebuilt whenever a lock changes; uv installs exactly the locked versions.
$(VENV)/.synced: requirements/dev.lock pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check "$$(grep -E '^uv==' requirements/dev.lock | cut -d' ' -f1)"
	$(VENV)/bin/uv pip sync -q --python $(PY) requirements/dev.lock
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $@

venv: $(VENV)/.synced

lab-up: deps venv
	$(LAB) up

# The lab, deployed: hosts up, site.yml, a smoke task per queue, then where everything is.
lab: lab-up
	ansible-playbook site.yml
	ansible-playbook playbooks/smoke.yml
	@$(MAKE) --no-print-directory lab-summary

lab-summary:
	@echo; echo "==> The lab"; $(LAB) status --lab lab
	@flower=$$($(PY) -c 'import json; print(json.load(open(".lab/lab/hosts.json"))["hosts"]["ops1"]["address"])'); \
	echo "ssh:     ssh -F .lab/ssh_config HOST        (or: $(LAB) ssh HOST); hosts: data1 worker1 worker2 ops1"; \
	echo "Flower:  http://$$flower:5555/   user admin, password in .lab/secrets/flower_basic_auth_password"; \
	echo "Submit:  ssh -F .lab/ssh_config ops1 taskctl submit ops.probe --args '[\"hello\"]' --queue pricing"; \
	echo "Result:  ssh -F .lab/ssh_config ops1 taskctl status ID     (names the worker, e.g. pricing@worker1)"; \
	echo "Logs:    ssh -F .lab/ssh_config worker1 tail -f /var/log/celery/pricing.log   (also: journalctl -u celery-worker@pricing)"; \
	echo "Workers: ssh -F .lab/ssh_config worker1 systemctl status 'celery-worker@*'; beat and Flower run on ops1"

lab-down: venv
	$(LAB) down

lab-status: venv
	$(LAB) status

lint: venv
	ruff check .
	ruff format --check .
	mypy
	yamllint -s .
	ansible-lint --offline --profile production

# Role READMEs against meta/argument_specs.yml and defaults/main.yml (names and order).
test-docs: venv
	pytest tests/docs

test-app: deps venv
	pytest tests/app

# The preflight refusing wrong inventories (no hosts needed: the inventory's hosts are the controller).
test-deploy: venv
	pytest tests/deploy

test-molecule: deps venv
	@for s in $(SCENARIOS); do echo "==> molecule test -s $$s"; molecule test -s $$s || exit 1; done

test: lint test-docs test-app test-deploy test-molecule

lock: venv
	uv pip compile -q pyproject.toml --universal --python-version 3.11 --generate-hashes -o requirements/app.lock
	uv pip compile -q pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes -o requirements/dev.lock

clean: lab-down
	rm -rf $(VENV) build dist *.egg-info
