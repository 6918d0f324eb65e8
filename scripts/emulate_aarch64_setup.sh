#!/bin/sh
# An aarch64 CPython 3.11 with tei_ort's runtime wheels, run on an x86 host by qemu-aarch64, for
# scripts/emulated_fidelity.py (fidelity only: speed under emulation means nothing).
#
#   scripts/emulate_aarch64_setup.sh /tmp/arm       # Debian 12 host: apt-get, dpkg, pip
#   .venv/bin/python scripts/emulated_fidelity.py PACKAGE --cpu neoverse-n1 \
#       --emulator "qemu-aarch64 -L /tmp/arm/root" --python /tmp/arm/root/usr/bin/python3.11 \
#       --pythonpath /tmp/arm/site --cpuinfo /tmp/arm/cpuinfo.neoverse-n1
#
# Writes DIR/root (the interpreter and its shared libraries, from Debian bookworm's arm64
# packages), DIR/site (numpy, onnxruntime, tokenizers: PyPI's manylinux aarch64 wheels, the
# versions this venv has) and DIR/cpuinfo.<qemu cpu>: an aarch64 /proc/cpuinfo per emulated CPU.
# qemu-user 7.2 passes the host's x86 /proc/cpuinfo through and ONNX Runtime's cpuinfo library
# dies (SIGSEGV) on it at import; emulated_fidelity.py --cpuinfo binds one of these over it in a
# private mount namespace. Each lists the features qemu's -cpu model reports in HWCAP (what MLAS
# and numpy read), with the MIDR part of the real core.
set -eu
DIR=${1:?usage: $0 DIR}
PY=$(dirname "$0")/../.venv/bin/python
mkdir -p "$DIR/debs" "$DIR/root" "$DIR/wheels"
DIR=$(cd "$DIR" && pwd)

dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -qq; }
(cd "$DIR/debs" && apt-get download -qq \
    python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 \
    libc6:arm64 libstdc++6:arm64 libgcc-s1:arm64 zlib1g:arm64 libexpat1:arm64 libssl3:arm64 \
    libffi8:arm64 libbz2-1.0:arm64 liblzma5:arm64 libuuid1:arm64 libncursesw6:arm64 \
    libtinfo6:arm64 libreadline8:arm64 libsqlite3-0:arm64 libcrypt1:arm64 libnsl2:arm64 \
    libtirpc3:arm64 libdb5.3:arm64 libgssapi-krb5-2:arm64 libkrb5-3:arm64 libk5crypto3:arm64 \
    libcom-err2:arm64 libkrb5support0:arm64 libkeyutils1:arm64 media-types)
for deb in "$DIR"/debs/*.deb; do dpkg -x "$deb" "$DIR/root"; done

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
TARGET="--platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --only-binary=:all:"
TARGET="$TARGET --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none"
# shellcheck disable=SC2086
"$PY" -m pip download -q -d "$DIR/wheels" $TARGET "onnxruntime==$(version onnxruntime-gpu)" \
    "numpy==$(version numpy)" "tokenizers==$(version tokenizers)" "onnx==$(version onnx)"
# shellcheck disable=SC2086
"$PY" -m pip install -q --no-deps --target "$DIR/site" $TARGET "$DIR"/wheels/*.whl

cpuinfo() {  # $1 qemu cpu, $2 MIDR part, $3 Features
    for n in 0 1; do
        printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: %s\n' "$n" "$3"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n'
        printf 'CPU part\t: %s\nCPU revision\t: 1\n\n' "$2"
    done > "$DIR/cpuinfo.$1"
}
BASE="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
V82="$BASE atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp ssbs"
cpuinfo cortex-a72 0xd08 "$BASE"  # Graviton1: no dot product
cpuinfo neoverse-n1 0xd0c "$V82"  # Graviton2: asimddp
cpuinfo max 0xd4f "$V82 sha3 asimdfhm flagm sb frint sve sve2 svei8mm svebf16 i8mm bf16"
echo "aarch64 python: qemu-aarch64 -L $DIR/root $DIR/root/usr/bin/python3.11 (PYTHONPATH $DIR/site)"
