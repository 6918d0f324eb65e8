#!/bin/sh
# An aarch64 venv with tei_ort's serving dependencies, run on an x86 host by qemu-aarch64, for
# scripts/emulate_arm.py (variant selection on ARM's kernels) and tei-serve under emulation.
# Fidelity only: speed under emulation means nothing.
#
#   scripts/emulate_arm_setup.sh /tmp/arm
#   .venv/bin/python scripts/emulate_arm.py PACKAGE --cpus cortex-a72,neoverse-n1,max \
#       --root /tmp/arm/root --python /tmp/arm/venv/bin/python3.11 --queries 12 --passages 2
#
# The interpreter is Debian bookworm's arm64 CPython 3.11, unpacked into DIR/root by
# emulate_aarch64_setup.sh (never installed: python3:arm64 would replace the host's python3).
# DIR/venv is a venv of it; its packages are PyPI's manylinux aarch64 wheels, fetched by this
# venv's pip (--platform), so nothing is built or installed under emulation. The list is
# pyproject's [project] dependencies with onnxruntime for onnxruntime-gpu (no aarch64 wheel),
# each at the version this venv has, plus openvino. tei_ort itself comes from the checkout
# (emulate_arm.py puts it on PYTHONPATH).
set -eu
DIR=${1:?usage: $0 DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=$HERE/../.venv/bin/python
"$HERE/emulate_aarch64_setup.sh" "$DIR"
DIR=$(cd "$DIR" && pwd)
qemu-aarch64 -L "$DIR/root" "$DIR/root/usr/bin/python3.11" -m venv --without-pip "$DIR/venv"

REQUIREMENTS=$("$PY" - "$HERE/../pyproject.toml" <<'EOF'
import importlib.metadata as m, re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"] + ["openvino"]
for dep in deps:
    name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0)
    try:
        version = m.version(name)
    except m.PackageNotFoundError:
        version = None
    name = "onnxruntime" if name == "onnxruntime-gpu" else name
    print(f"{name}=={version}" if version else name)
EOF
)
PLATFORMS=""
for minor in $(seq 17 36); do PLATFORMS="$PLATFORMS --platform manylinux_2_${minor}_aarch64"; done
# shellcheck disable=SC2086
"$PY" -m pip install -q --target "$DIR/venv/lib/python3.11/site-packages" \
    $PLATFORMS --platform manylinux2014_aarch64 --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none $REQUIREMENTS
echo "aarch64 venv: qemu-aarch64 -L $DIR/root $DIR/venv/bin/python3.11"
