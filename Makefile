# Two commands for a newcomer: `make run` and `make test`. Every target
# creates the virtual environment from the pinned requirements first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: venv run test lint docs fuzz bench clean dist dist-test dist-chroot-test cpu-test image \
	image-test packages packages-check service-test

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Train, evaluate and predict on the sample dataset the package ships.
run: $(STAMP)
	$(BIN)/python -m mlbackend.demo

test: $(STAMP)
	$(BIN)/pytest --cov=mlbackend --cov-report=term-missing --numprocesses=auto --maxprocesses=4

# ruff (lint and format), mypy on the package, and the docs generated from the
# code (cog) checked for staleness.
LINTED := mlbackend tests bench packaging docs/gen.py mlbackend.spec
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	$(BIN)/cog --check -I docs docs/cli.md docs/server.md

# Rewrite the generated parts of docs/ (every --help, the server's options and
# environment) after changing the command line.
docs: $(STAMP)
	$(BIN)/cog -r -I docs docs/cli.md docs/server.md

# The release: the frozen program (PyInstaller, one directory) in
# dist/mlbackend-VERSION-linux-ARCH.tar.gz with its .sha256, built in a Debian
# bullseye root so that it runs on glibc 2.28 and later (packaging/BUILD-ROOT.md;
# needs root; the root is cached in /var/cache/mlbackend). See docs/release.md.
# Rebuilt when a file it is made from changes. ARCH=aarch64 on an x86-64
# machine builds and checks the aarch64 release under qemu-user (every
# target below takes ARCH).
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' mlbackend/__init__.py)
ARCH    ?= $(shell uname -m)
ARCHIVE := dist/mlbackend-$(VERSION)-linux-$(ARCH).tar.gz
DIST_INPUTS := mlbackend.spec README.md $(wildcard docs/*.md) LICENSE requirements.txt requirements-dev.txt \
	$(shell find mlbackend packaging -type f ! -name '*.pyc' ! -path 'packaging/deb/*' \
		! -path 'packaging/rpm/*' ! -name build-packages.sh)   # the packages' own files: not in it

$(ARCHIVE): $(STAMP) $(DIST_INPUTS)
	ARCH=$(ARCH) HOST_PIP=$(BIN)/pip bash packaging/build-dist.sh

dist: $(ARCHIVE)
	@echo "$(ARCHIVE): $$(du -m $(ARCHIVE) | cut -f1) MB"
	@tar -xzOf $(ARCHIVE) --occurrence=1 $(notdir $(ARCHIVE:.tar.gz=))/BUILD-INFO \
		| sed -n 's/^glibc: /glibc floor: /p'

# The archive unpacked in a temporary directory, every module run as Moodle
# runs it, with env -i, an empty HOME and no virtual environment.
dist-test: $(ARCHIVE)
	PYTHON=$(BIN)/python bash tests/frozen/dist-test.sh $(ARCHIVE)

# The same check in minimal Debian roots without Python (debootstrap, chroot;
# root): bullseye (glibc 2.31) and bookworm (2.36).
CHROOT_SUITES ?= bullseye bookworm
dist-chroot-test: $(ARCHIVE)
	for suite in $(CHROOT_SUITES); do \
		SUITE=$$suite PYTHON=$(BIN)/python bash tests/frozen/chroot-test.sh $(ARCHIVE) || exit 1; \
	done

# CPUs without AVX or below x86-64-v2 get an answer, not SIGILL: the program
# and the frozen one run on qemu-user's emulated Nehalem and kvm64 CPUs. With
# ARCH=aarch64 (on x86-64): the frozen program on emulated ARM cores, from
# the Cortex-A53 (ARMv8.0) to Neoverse N1 and qemu's max.
cpu-test: $(STAMP) $(ARCHIVE)
ifeq ($(ARCH),x86_64)
	command -v qemu-x86_64 >/dev/null || { apt-get update -q && apt-get install -y -q qemu-user; }
	$(BIN)/python -m pytest -p no:cacheprovider -m emulated tests/test_cpu.py
endif
	PYTHON=$(BIN)/python bash tests/frozen/qemu-check.sh $(ARCHIVE)

# The container image (podman, from the archive; docs/container.md), and its
# test over HTTP with Moodle's client simulator (../shared/tools/rest.py).
image: $(ARCHIVE)
	bash packaging/build-image.sh $(ARCHIVE)

image-test: $(STAMP) image
	PYTHON=$(BIN)/python bash tests/frozen/image-test.sh localhost/mlbackend:$(VERSION)-$(ARCH)

# The .deb and the .rpm of the archive (packaging/build-packages.sh; needs
# dpkg-deb and rpmbuild, which it installs from Debian's rpm package), with
# their .sha256; packages-check checks their metadata, file lists and
# scripts without installing them (the only check of the aarch64 ones).
DEB_ARCH := $(if $(filter aarch64,$(ARCH)),arm64,amd64)
DEB      := dist/mlbackend_$(VERSION)_$(DEB_ARCH).deb
RPM      := dist/mlbackend-$(VERSION)-1.$(ARCH).rpm
PACKAGE_INPUTS := packaging/build-packages.sh $(wildcard packaging/deb/* packaging/rpm/*)

$(DEB) $(RPM) &: $(ARCHIVE) $(PACKAGE_INPUTS)
	bash packaging/build-packages.sh $(ARCHIVE)

packages: $(DEB) $(RPM)

packages-check: $(DEB) $(RPM)
	bash tests/service/package-check.sh $(ARCHIVE)

# The server mode installed as a sysadmin does, under systemd as PID 1 in
# podman containers of Debian SERVICE_SUITES, from SERVICE_FORMS: the
# archive (install.sh --systemd), the .deb (apt install) and the .rpm (its
# scriptlets, run by Debian's rpm: SERVICE_FORMS=rpm). An older build
# (3.0.99, made from the archive by tests/service/old-build.py) is upgraded
# under the running server and rolled back to. x86_64 only.
SERVICE_SUITES ?= bullseye bookworm
SERVICE_FORMS  ?= archive deb
OLD_VERSION    := 3.0.99
OLD_ARCHIVE    := build/service/mlbackend-$(OLD_VERSION)-linux-$(ARCH).tar.gz
OLD_DEB        := build/service/mlbackend_$(OLD_VERSION)_$(DEB_ARCH).deb
OLD_RPM        := build/service/mlbackend-$(OLD_VERSION)-1.$(ARCH).rpm

$(OLD_ARCHIVE): $(STAMP) $(ARCHIVE) tests/service/old-build.py
	command -v objcopy >/dev/null || { apt-get update -q && apt-get install -y -q binutils; }
	$(BIN)/python tests/service/old-build.py --version $(OLD_VERSION) $(ARCHIVE) build/service >/dev/null

$(OLD_DEB): $(OLD_ARCHIVE) $(PACKAGE_INPUTS)
	PACKAGES=deb GZIP_LEVEL=1 bash packaging/build-packages.sh $(OLD_ARCHIVE) >/dev/null

$(OLD_RPM): $(OLD_ARCHIVE) $(PACKAGE_INPUTS)
	PACKAGES=rpm GZIP_LEVEL=1 bash packaging/build-packages.sh $(OLD_ARCHIVE) >/dev/null

service-test: $(STAMP) $(OLD_ARCHIVE) $(if $(filter deb,$(SERVICE_FORMS)),$(DEB) $(OLD_DEB)) \
		$(if $(filter rpm,$(SERVICE_FORMS)),$(RPM) $(OLD_RPM))
	for suite in $(SERVICE_SUITES); do for form in $(SERVICE_FORMS); do \
		case $$form in deb) new=$(DEB) old=$(OLD_DEB) ;; rpm) new=$(RPM) old=$(OLD_RPM) ;; \
			*) new=$(ARCHIVE) old=$(OLD_ARCHIVE) ;; esac; \
		PYTHON=$(BIN)/python bash tests/service/service-test.sh $$suite $$form $$new $$old || exit 1; \
	done; done

# Hostile input at length: the property-based tests with thousands of fresh
# examples (make test runs a few, the same every time). Failing examples are
# kept in .hypothesis/ and replayed first by the next run.
fuzz: $(STAMP)
	MLBACKEND_FUZZ=1 $(BIN)/pytest tests/test_fuzz.py tests/test_fuzz_zip.py tests/test_server_hostile.py \
		--hypothesis-show-statistics

clean:
	rm -rf build dist *.egg-info .pytest_cache .coverage htmlcov

# Speed, memory and quality on the shared real datasets, beside the old
# backend's figures (needs ../shared/datasets; see bench/bench.py --help).
bench: $(STAMP)
	$(BIN)/python bench/bench.py $(BENCH_ARGS)
