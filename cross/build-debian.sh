#!/usr/bin/env bash
# Cross-build talkie for a Raspberry Pi target without Docker, with Debian
# 12's Rust packages and cross compilers (the host build keeps rustup's
# toolchain; Debian's rustc is used for the cross target only).
#
#   cross/build-debian.sh aarch64        # Raspberry Pi OS 64-bit
#   cross/build-debian.sh armv7          # Raspberry Pi OS 32-bit
#   cross/build-debian.sh aarch64 test   # unit tests, run under qemu-user
#
# Installs what it needs with apt (root or sudo). Output:
# target/<triple>/release/talkie (or the unit-test results).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-aarch64}
mode=${2:-build}
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo

case "$arch" in
  aarch64)
    triple=aarch64-unknown-linux-gnu; deb=arm64; gnu=aarch64-linux-gnu
    pkgs="libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross libasound2-dev:arm64" ;;
  armv7)
    triple=armv7-unknown-linux-gnueabihf; deb=armhf; gnu=arm-linux-gnueabihf
    pkgs="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross libasound2-dev:armhf" ;;
  *) echo "usage: $0 aarch64|armv7" >&2; exit 2 ;;
esac

if ! dpkg --print-foreign-architectures | grep -qx "$deb"; then
  $sudo dpkg --add-architecture "$deb"
fi
# An index may fail to download while a mirror syncs, and apt then drops
# that whole suite (bookworm-security carries rustc-web): retry a few times,
# then go on and let the install say what is missing.
# Nothing to do when every package is in (`make test` builds in the
# background, then runs the tests with a second call).
missing=""
for p in rustc-web rust-web-src qemu-user $pkgs; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  for attempt in 1 2 3; do
    $sudo apt-get update -qq && break
    echo "apt-get update failed (attempt $attempt of 3)" >&2; sleep $((attempt * 15))
  done
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
fi

upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
export RUSTC=/usr/bin/rustc PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_LIBDIR=/usr/lib/$gnu/pkgconfig
export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc"
# The guest's loader and libc must come from one package. libasound2-dev:$deb
# pulls in the multiarch libc6:$deb, and the target's loader then finds that
# libc.so.6 in /lib/$gnu; with `-L /usr/$gnu` qemu would start the cross
# toolchain's older ld.so (libc6-$deb-cross) beside it, and the two builds'
# private structures disagree: the first pthread_create loops forever walking
# a corrupt stack-cache list. `-L /` runs the multiarch pair.
export "CARGO_TARGET_${upper}_RUNNER=qemu-$( [ "$arch" = aarch64 ] && echo aarch64 || echo arm ) -L /"
if [ "$mode" = test ]; then
  # The libraries' unit tests, built for the target and run by qemu-user
  # (the runner above). The end-to-end tests need the host's ALSA plugins
  # and Chromium; they run natively in `make test`. Their own target dir:
  # a host build can run beside this one (`make test` does) without
  # waiting for cargo's lock on target/.
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cross}
  std=(); [ "$arch" = armv7 ] && std=(-Zbuild-std=std,panic_abort) && export RUSTC_BOOTSTRAP=1
  # Dependencies at opt-level 1 (TALKIE_CROSS_OPT, default 1) instead of
  # the dev profile's 3: Debian's rustc spent most of CI's budget
  # optimizing tract for aarch64 (tract-core alone: 16 CPU minutes), while
  # tract's matrix kernels are assembly and run as fast at any level. The
  # tests check correctness under emulation, not speed.
  opt=${TALKIE_CROSS_OPT:-1}
  # Every package the workspace's dev profile names (talkie, talkie-speech,
  # tract and the other numeric crates at 3) gets the same level here.
  std+=(--config "profile.dev.package.\"*\".opt-level=$opt")
  for pkg in $(sed -n 's/^\[profile\.dev\.package\.\([A-Za-z0-9_-]*\)\]$/\1/p' Cargo.toml); do
    std+=(--config "profile.dev.package.$pkg.opt-level=$opt")
  done
  # The crates whose code differs by architecture: talkie-speech (tract's
  # kernels, the vocabulary's SIMD dot products, the mel front end) and
  # talkie-hal (ALSA and GPIO bindings). The firmware crate's own tests are
  # portable logic on two 64-bit little-endian targets, and they add tokio,
  # hyper, rustls and ring, SQLite and the firmware itself to what Debian's
  # rustc must build for aarch64 in CI's budget (90 min on 2 cores; the
  # whole step took 26.5 min with them). TALKIE_CROSS_CRATES="-p talkie -p talkie-hal -p talkie-speech"
  # runs the firmware's tests under qemu too (`make deb DEB_ARCHES=arm64`
  # builds the whole product for aarch64).
  read -r -a crates <<< "${TALKIE_CROSS_CRATES:--p talkie-hal -p talkie-speech}"
  # TALKIE_QEMU_RUN=0 only builds them (compile and link for the target).
  if [ "${TALKIE_QEMU_RUN:-1}" = 1 ]; then
    # Every unit test on qemu's default CPU model ("max": dot-product and
    # fp16, like a Pi 5's Cortex-A76), except those that run Whisper over
    # the dev clips: the recognition check below (opt-in), the kernels'
    # dev-set check (the NEON kernel is held to the portable one by the
    # synthetic tests of stt::dot here) and the prefix-cut check (31 clips twice; ~40 s natively, far beyond CI's budget under
    # emulation at opt-level 1 — it ran past 60 min and CI timed out).
    # Both run natively in `make test`, as do Moonshine and agreement
    # behind the VAD (two models over dev clips; the opt-in per-CPU run
    # below checks Moonshine's three clips in both forms), and the check
    # that four runs of one fp32 transcript give the same float, the
    # stored Moonshine measurement and the stages in two forms (an fp32
    # encoder over three clips, or one window: minutes under emulation;
    # the int8 decoder's kernels are held to tract's chain here by
    # fused_attention_steps_like_the_onnx_chain), and a stored
    # calibration measured again (a whole Whisper calibration).
    # TALKIE_QEMU_ALL=0 skips this run (only the per-CPU checks below).
    [ "${TALKIE_QEMU_ALL:-1}" = 1 ] && cargo test "${std[@]}" --target "$triple" "${crates[@]}" --lib -- \
      --skip three_dev_clips_give_the_reference_transcripts \
      --skip a_prefix_cut_at_the_pause_gives_the_whole_captures_words_on_every_dev_clip \
      --skip every_vocab_kernel_gives_the_portable_transcripts_on_the_dev_set \
      --skip moonshine_behind_the_vad_gives_the_reference_transcripts \
      --skip agreement_takes_the_text_both_decoders_prefer \
      --skip fused_moonshine_attention_steps_like_the_onnx_chain \
      --skip fused_int8_steps_are_nearer_fp32_than_the_chain \
      --skip fused_int8_encoders_are_nearer_fp32_than_the_chain \
      --skip a_transcript_is_the_same_float_every_run \
      --skip moonshine_form_is_measured_once_then_reused \
      --skip auto_takes_agreement_only_within_the_latency_budget \
      --skip stages_in_two_forms_load_from_the_stored_choice_and_transcribe \
      --skip the_decoder_times_alone_against_cross_kv_shaped_as_the_window \
      --skip each_model_scores_from_its_greedy_pass_what_it_shares \
      --skip a_calibration_stored_while_busy_is_measured_again
    # Recognition in every precision per CPU model, so each kernel family
    # tract picks is checked (max: dot-product; cortex-a72: Pi 4;
    # cortex-a53: Zero 2 W / Pi 3). Correctness only: emulated time is not
    # a speed figure. Opt-in (several minutes per model under emulation):
    # TALKIE_QEMU_CPUS="max cortex-a72 cortex-a53" make cross-test, and for
    # 32-bit Raspberry Pi OS TALKIE_QEMU_CPUS=cortex-a7 cross/build-debian.sh armv7 test.
    # qemu-user shows the guest the host's /proc/cpuinfo, where tract looks
    # for `asimdhp`: on the models with fp16 arithmetic it is told
    # (TRACT_CPU_ISA=+fp16), so its fp16 kernels run there. Each model's
    # three clips in every form (Whisper's and Moonshine's tests share the
    # name), and agreement over two clips, one where the models differ
    # and the scoring picks (both models fp32).
    for cpu in ${TALKIE_QEMU_CPUS:-}; do
      echo "== recognition under qemu-$( [ "$arch" = aarch64 ] && echo aarch64 || echo arm ) -cpu $cpu =="
      isa=""; case "$cpu" in max|cortex-a76|neoverse-n1) isa=+fp16 ;; esac
      QEMU_CPU=$cpu TRACT_CPU_ISA=$isa cargo test "${std[@]}" --target "$triple" -p talkie-speech --lib -- \
        three_dev_clips_give_the_reference_transcripts agreement_takes_the_text_both_decoders_prefer --nocapture
    done
  else
    cargo test "${std[@]}" --target "$triple" "${crates[@]}" --lib --no-run
  fi
  exit 0
fi
if [ "$arch" = armv7 ]; then
  # Debian's armhf standard library can lag the compiler: build std from source.
  RUSTC_BOOTSTRAP=1 cargo build -Zbuild-std=std,panic_abort --release --target "$triple" --bin talkie
else
  cargo build --release --target "$triple" --bin talkie
fi
echo "built target/$triple/release/talkie"
