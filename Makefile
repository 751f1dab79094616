# The two commands that matter: `make lab` (a working local cluster) and `make test` (every test).
# Each installs what it needs: Debian packages with apt, Python packages into .venv from the locks.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
LAB := $(PY) lab/lab.py
# The lab `make lab-summary` describes (inventories/lab is `lab`; e.g. LAB_NAME=mol-cluster for Molecule's).
LAB_NAME ?= lab
LAB_SSH_CONFIG := .lab/$(if $(filter lab,$(LAB_NAME)),,$(LAB_NAME)/)ssh_config
# Molecule scenarios, run in this order by `make test-molecule`.
SCENARIOS ?= platform redis postgresql cluster
# `make test` runs the cluster scenario (the long pole: its fault tests mostly wait) beside the
# other lane; each lane's full output goes to a log here as it runs (tail -f to follow).
TEST_LOGS := .lab/test-logs
# Debian packages of the controller: the lab (nspawn hosts), the app tests (real Redis, PostgreSQL),
# the browser that looks at Flower (molecule/cluster/tests/test_flower_browser.py).
APT_PACKAGES := python3-venv debootstrap systemd-container iptables iproute2 openssh-client rsync \
	redis-server postgresql apt-cacher-ng chromium chromium-driver

.PHONY: help deps venv tools lab lab-summary lab-up test-deploy lab-down lab-status test lint lint-python lint-ansible test-docs test-app test-monitoring test-molecule test-lane-cluster test-lane-rest lock clean

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
# Ansible prints each task as it runs; the timer callback prints how long each playbook took.
lab: deps venv
	@echo "==> [1/4] booting the lab's hosts (lab/lab.py up; the image is built once, ~1-2 min)"
	$(LAB) up
	@echo "==> [2/4] deploying the bundle (ansible-playbook site.yml: ~3 min the first time, ~1 min after)"
	ANSIBLE_CALLBACKS_ENABLED=ansible.posix.timer ansible-playbook site.yml
	@echo "==> [3/4] smoke test: a task per queue, who ran it, its log line (playbooks/smoke.yml)"
	ANSIBLE_CALLBACKS_ENABLED=ansible.posix.timer ansible-playbook playbooks/smoke.yml
	@echo "==> [4/4] summary"
	@$(MAKE) --no-print-directory lab-summary

# Where everything is, read from the lab (addresses) and from ops1 (Flower's deployed settings).
lab-summary: venv
	@$(LAB) status --lab $(LAB_NAME)
	@ssh="ssh -F $(LAB_SSH_CONFIG)"; \
	set -- $$($$ssh ops1 "sed -n -e 's/^FLOWER_ADDRESS=//p' -e 's/^FLOWER_PORT=//p' \
		-e 's/^FLOWER_BASIC_AUTH=\([^:]*\):.*/\1/p' /etc/celery/flower.env" | tr -d "'\""); \
	echo; \
	echo "ssh:     $$ssh HOST   (hosts: data1 worker1 worker2 ops1; or: $(LAB) ssh HOST)"; \
	echo "Flower:  https://$$1:$$2/   user $$3, password: cat .lab/secrets/flower_basic_auth_password; CA: .lab/pki/ca.crt"; \
	set -- $$($$ssh ops1 "sed -n 's/.*--web.listen-address=\([^ \"]*\).*/\1/p' /etc/default/prometheus \
		/etc/default/prometheus-alertmanager"); \
	echo "Prometheus:   https://$$1/classic/alerts  and the Celery console https://$$1/consoles/celery.html"; \
	echo "              user admin, password: cat .lab/secrets/prometheus_web_password; CA: .lab/pki/ca.crt"; \
	echo "Alertmanager: https://$$2/api/v2/alerts (no web UI in Debian: amtool, docs/RUNBOOK.md)"; \
	echo "              user admin, password: cat .lab/secrets/alertmanager_web_password"; \
	set -- $$($$ssh ops1 "sed -n -e 's/^APP_API_ADDRESS=//p' -e 's/^APP_API_PORT=//p' /etc/celery/api.env"); \
	echo "Job API:      https://$$1:$$2/docs  (OpenAPI; docs/API.md); token of client webapp:"; \
	echo "              cat .lab/secrets/celery_api_token_webapp; CA: .lab/pki/ca.crt"; \
	echo "Workers: $$ssh ops1 taskctl ping       (every NAME@HOST instance that answers)"; \
	echo "Submit:  $$ssh ops1, then:"; \
	echo "           taskctl submit ops.probe --args '[\"hello\"]' --queue pricing   # prints the task id"; \
	echo "           taskctl result --wait ID; taskctl status ID   # its result; \"worker\": \"pricing@worker1\" (or 2)"; \
	echo "Log:     $$ssh worker1 grep ID /var/log/celery/pricing.log   (on that worker; or journalctl -u celery-worker@pricing)"; \
	echo "Queues:  $$ssh ops1 taskctl queues     More: docs/RUNBOOK.md; remove the lab: make lab-down"

lab-down: venv
	$(LAB) down

lab-status: venv
	$(LAB) status

lint: lint-python lint-ansible

# Seconds: `make test` runs these first, before anything else.
lint-python: venv
	ruff check .
	ruff format --check .
	mypy
	yamllint -s .

# About two minutes: `make test` runs it at the head of its second lane, off the long pole.
lint-ansible: venv
	ansible-lint --offline --profile production

# Role READMEs against meta/argument_specs.yml and defaults/main.yml (names and order).
test-docs: venv
	pytest tests/docs

test-app: deps venv
	pytest tests/app tests/lab

# promtool and amtool, extracted from Debian's packages into .tools/ (no daemon installed).
tools: deps
	bash tests/monitoring/tools.sh

# The alert rules (promtool test rules), the Alertmanager configuration, the dashboard and the console.
test-monitoring: venv tools
	pytest tests/monitoring

# The preflight refusing wrong inventories (no hosts needed: the inventory's hosts are the controller).
test-deploy: venv
	pytest tests/deploy

test-molecule: deps venv
	@for s in $(SCENARIOS); do echo "==> molecule test -s $$s"; molecule test -s $$s || exit 1; done

# The quick linters and docs first (seconds, fail early), then two lanes at once: the cluster
# scenario, and ansible-lint, then (once the cluster is converged) the app tests, the preflight
# and the three small scenarios one after the other (~25 min, beside the cluster's fault tests,
# which mostly wait). -O prints each lane whole when it ends; a
# failed lane's last lines, failed tests and fault figures are printed again at the very end, then
# the cluster's state at each failed test (molecule/cluster/tests/conftest.py).
test: lint-python test-docs test-monitoring
	@rm -rf $(TEST_LOGS) && mkdir -p $(TEST_LOGS)
	@echo "==> two lanes at once: cluster scenario | ansible-lint, app, preflight, platform redis postgresql (live: tail -f $(TEST_LOGS)/*.log)"
	@$(MAKE) --no-print-directory -j2 -O test-lane-cluster test-lane-rest REST_WAITS=1 || { \
		for f in $(TEST_LOGS)/*.failed; do [ -e "$$f" ] || continue; \
			echo "==> FAILED: $${f%.failed}.log, its last lines:"; tail -n 12 "$${f%.failed}.log"; \
			echo "==> its failed tests and fault figures:"; sed 's/\x1b\[[0-9;]*m//g' "$${f%.failed}.log" \
				| grep -E '(FAILED|ERROR) tests/|RELIABILITY' | awk '!seen[$$0]++' | tail -n 20; done; \
		[ ! -s $(TEST_LOGS)/diagnosis.txt ] || { echo "==> the cluster at each failure:"; head -n 40 $(TEST_LOGS)/diagnosis.txt; }; \
		exit 1; }

# Inside a lane one thing at a time, its output written as it comes: a make of its own (no -j2,
# no -O from the parent), Python unbuffered.
LANE = MAKEFLAGS= PYTHONUNBUFFERED=1 $(NICE) $(MAKE) --no-print-directory

test-lane-cluster: deps venv
	@$(LANE) test-molecule SCENARIOS=cluster 2>&1 | tee $(TEST_LOGS)/cluster.log || { touch $(TEST_LOGS)/cluster.failed; exit 1; }

# The second lane, niced. In `make test` (REST_WAITS=1) its heavy part waits until the cluster is
# converged (molecule/cluster/tests/conftest.py touches cluster.verifying) or its lane failed, at
# most 30 minutes: the converge and idempotence run alone (twice as slow beside this lane), this
# lane beside the verify's waits.
test-lane-rest: NICE := nice -n 10
test-lane-rest: deps venv
	@{ $(LANE) lint-ansible && { [ -z "$(REST_WAITS)" ] || $(WAIT_FOR_CLUSTER); } \
		&& $(LANE) test-app test-deploy test-molecule SCENARIOS="platform redis postgresql"; } 2>&1 \
		| tee $(TEST_LOGS)/rest.log || { touch $(TEST_LOGS)/rest.failed; exit 1; }
WAIT_FOR_CLUSTER = { echo "==> waiting for the cluster scenario's converge (then: app, preflight, platform redis postgresql)"; \
	for i in $$(seq 1800); do [ -e $(TEST_LOGS)/cluster.verifying ] || [ -e $(TEST_LOGS)/cluster.failed ] && break; sleep 1; done; }

lock: venv
	uv pip compile -q pyproject.toml --universal --python-version 3.11 --generate-hashes -o requirements/app.lock
	uv pip compile -q pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes -o requirements/dev.lock

clean: lab-down
	rm -rf $(VENV) build dist *.egg-info
