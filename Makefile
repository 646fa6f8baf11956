# voipmon: bootstrap, demo, tests and benchmarks. See README.md.
#
#   make demo    a central and a sensor on loopback (SQLite, bundled capture)
#   make test    ruff, then every trial test
#   make bench   the benchmarks in bench/, each beside its reference run

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian/Ubuntu packages: build deps of pypcap and python-lzo, plus the tools the
# tests and benchmarks compare against or drive (sox, ffmpeg and the bcg729 and
# vo-amrwbenc encoders make the audio the codec tests decode; prometheus scrapes the
# metrics and its promtool checks them and the alerting rules).
APT_PACKAGES := python3-venv python3-dev build-essential libpcap-dev liblzo2-dev \
	tshark tcpdump sip-tester faketime tcpreplay chromium chromium-driver iproute2 \
	kamailio sngrep sipvicious \
	sox libsox-fmt-all ffmpeg libbcg729-0 libvo-amrwbenc0 prometheus

.PHONY: bootstrap packages venv demo test lint bench clean

bootstrap: packages venv

packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat mode puts the checkout on sys.path, so twistd finds twisted/plugins here.
	$(PY) -m pip install -q --config-settings editable_mode=compat -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: bootstrap
	$(PY) -m voipmon.demo $(ARGS)

lint: venv
	$(VENV)/bin/ruff check voipmon twisted bench

test: bootstrap lint
	$(VENV)/bin/trial --temp-directory=_trial_temp voipmon

bench: bootstrap
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) _trial_temp* .demo build *.egg-info
