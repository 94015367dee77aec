# talkie — the two commands of the quick start are `make demo` and `make test`.
# Both install what they need first (Debian/Ubuntu packages via apt).

SHELL := /bin/bash
CARGO ?= cargo
EVAL ?= $(abspath $(CURDIR)/../shared/eval)
APT_PACKAGES := libasound2-dev alsa-utils pkg-config python3 python3-pip python3-venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo)
export TALKIE_EVAL_DIR ?= $(EVAL)

.PHONY: all deps toolchain build models demo test lint bench clean

all: build

toolchain:
	@command -v $(CARGO) >/dev/null || { \
	  echo "error: the Rust toolchain (cargo) is not installed."; \
	  echo "       Install it with rustup (https://rustup.rs), or on Debian/Ubuntu: apt-get install cargo rustc"; \
	  exit 1; }

deps: toolchain
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
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

# The appliance end to end on simulated hardware. At this stage: the audio
# path on a 10 s speech clip played at real time (levels once a second),
# then on-device recognition of that clip and of two kiosk questions.
demo: build models
	@test -f "$(EVAL)/dev/real_beckett.wav" || { echo "error: speech clips not found in $(EVAL) (set EVAL=...)"; exit 1; }
	@echo "== talkie demo: audio path on $(EVAL)/dev/real_beckett.wav (real time) =="
	$(CARGO) run --quiet --bin talkie -- --config board/demo/talkie.toml \
	  --set audio.file=$(EVAL)/dev/real_beckett.wav run
	@echo "== talkie demo: speech to text on this machine (VAD + Whisper tiny.en) =="
	$(CARGO) run --quiet --bin talkie -- --config board/demo/talkie.toml \
	  --set audio.file=$(EVAL)/dev/real_beckett.wav transcribe \
	  $(EVAL)/dev/real_beckett.wav $(EVAL)/dev/dev_00.wav $(EVAL)/dev/48k_stereo/dev_01_48k_stereo.wav

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every test: formatting, lints, unit tests, the zero-allocation test and the
# end-to-end tests that run the real binary.
test: deps lint models
	$(CARGO) test --workspace --doc
	$(CARGO) test --workspace --lib --bins --tests

# Benchmarks write Markdown + JSON reports under target/bench/.
bench: deps models
	$(CARGO) bench -p talkie --bench audio_path --bench vad --bench stt
	@cat target/bench/audio_path.md target/bench/vad.md target/bench/stt.md

clean:
	$(CARGO) clean
