# Set-up contract: `make run`, `make test`, `make install` (leaves .venv/bin/sensor).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Build: clang/llvm/libbpf-dev/bpftool; run time: libbpf1; tests: the tools they drive, and the
# fleet's servers (nats-server, postgresql: tests start their own instances, never the system's).
APT_PACKAGES := clang llvm libbpf-dev libbpf1 bpftool make python3-venv procps util-linux gcc libc6-dev dbus-daemon iproute2 \
	nats-server postgresql
# packages: rpmbuild (rpm), wixl and msiinfo (wixl, msitools), systemd-analyze (systemd)
APT_PACKAGES += rpm wixl msitools systemd
# the panel's browser tests: Debian's chromium and its driver (selenium is pointed at both; nothing
# downloads a browser)
APT_PACKAGES += chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/' -e 's/ppc64le/powerpc/' \
	-e 's/s390x/s390/' -e 's/riscv64/riscv/')
BPF_SRC := $(wildcard bpf/*.bpf.c)
BPF_OBJ := $(patsubst bpf/%.bpf.c,sensor/bpf/%.bpf.o,$(BPF_SRC))
BPF_HDR := $(wildcard bpf/*.h bpf/lib/*.h bpf/activity/*.c)
VMLINUX := build/vmlinux.h
BPF_CFLAGS := -O2 -g -Wall -target bpf -D__TARGET_ARCH_$(ARCH) -Ibuild -Ibpf

.PHONY: run install test deps bpf venv bench bench-tools clean mounts package azurite

run: install mounts
	$(VENV)/bin/sensor run $(ARGS)

install: deps bpf venv

test: install mounts azurite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Azurite, the Azure Blob emulator the upload tests start (tests/test_azure_upload.py), from npm
# into build/node, pinned, installed only when missing
AZURITE := build/node/node_modules/.bin/azurite-blob
azurite: $(AZURITE)

$(AZURITE):
	npm install --no-audit --no-fund --loglevel=error --prefix build/node azurite@3.35.0

BENCH_TOOLS := strace linux-perf bpftrace libelf-dev zlib1g-dev inotify-tools auditd

bench: install mounts bench-tools
	$(VPY) bench/run.py
	$(VPY) bench/trace.py
	$(VPY) bench/rules.py
	$(VPY) bench/respond.py
	$(VPY) bench/activity.py
	$(VPY) bench/dashboard.py

# Tools the benchmarks compare against, and the minimal C tracer (built here, never shipped).
bench-tools: build/mintrace
	@missing=$$(for p in $(BENCH_TOOLS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

build/mintrace: bench/mintrace/mintrace.c bench/mintrace/mintrace.bpf.c $(VMLINUX)
	@DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libelf-dev zlib1g-dev >/dev/null
	clang $(BPF_CFLAGS) -c bench/mintrace/mintrace.bpf.c -o build/mintrace.bpf.o
	bpftool gen skeleton build/mintrace.bpf.o > build/mintrace.skel.h
	gcc -O2 -Ibuild -o $@ bench/mintrace/mintrace.c -lbpf -lelf -lz

# The wheel, .deb, .rpm and .msi into dist/ (docs/packages.md says what each installs where).
package: install
	$(VPY) packaging/build.py --out dist

# Debian packages, installed only when one is missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The kernel's virtual filesystems the sensor and its checks read.
mounts:
	@mountpoint -q /sys/kernel/tracing || $(SUDO) mount -t tracefs nodev /sys/kernel/tracing || true
	@mountpoint -q /sys/kernel/debug || $(SUDO) mount -t debugfs nodev /sys/kernel/debug || true
	@mountpoint -q /sys/kernel/security || $(SUDO) mount -t securityfs nodev /sys/kernel/security || true
	@mountpoint -q /sys/fs/bpf || $(SUDO) mount -t bpf bpf /sys/fs/bpf || true

$(VMLINUX):
	@mkdir -p build
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

# DWARF is stripped, BTF (what CO-RE and our layout test read) stays, as in libbpf-tools.
sensor/bpf/%.bpf.o: bpf/%.bpf.c $(BPF_HDR) $(VMLINUX)
	clang $(BPF_CFLAGS) -c $< -o $@.tmp
	llvm-strip -g $@.tmp
	mv $@.tmp $@

bpf: $(BPF_OBJ)

$(VPY):
	$(PYTHON) -m venv $(VENV)

venv: $(VPY)
	@$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'

clean:
	rm -rf build sensor/bpf/*.bpf.o dist *.egg-info
