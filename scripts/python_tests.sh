#!/usr/bin/env bash
# Build the Python wheel, install it into a fresh venv and run its pytest suite
# (crates/softprompt-py/tests: real SmolLM2 model, compared with the CLI's numbers).
#
#   scripts/python_tests.sh                 # python3 from PATH
#   PYTHON=python3.12 scripts/python_tests.sh
#
# The venv is made anew in $SOFTPROMPT_PY_VENV (default target/python-venv) with pinned
# maturin, numpy and pytest. The wheel (abi3, Python >= 3.9) is built with the command the
# README documents, into target/wheels; with CARGO_TARGET_DIR unset it uses the root target/
# folder, so the dependencies the CLI build compiled are reused. The tests compare against
# target/debug/softprompt (built here when missing) and need the model cache, as the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python3}
venv=${SOFTPROMPT_PY_VENV:-$root/target/python-venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
start=$SECONDS

command -v "$python" >/dev/null || { echo "python_tests: $python not found (set PYTHON)"; exit 1; }
rm -rf "$venv"
"$python" -m venv "$venv"
# numpy 2.4 needs Python >= 3.11; the wheel itself works with numpy >= 1.21 on Python >= 3.9.
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    maturin==1.16.0 numpy==2.4.6 pytest==9.2.0
echo "python_tests: venv ready in $((SECONDS - start)) s ($("$venv/bin/python" --version))"

cargo build -q -p softprompt-cli
rm -rf "$CARGO_TARGET_DIR/wheels"
# The one build command (README, "Python"):
"$venv/bin/maturin" build -m crates/softprompt-py/Cargo.toml --profile dev --strip \
    --out "$CARGO_TARGET_DIR/wheels" -i "$venv/bin/python"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$CARGO_TARGET_DIR"/wheels/softprompt-*.whl
echo "python_tests: wheel built and installed at $((SECONDS - start)) s"

# From a folder outside the source tree, so `import softprompt` is the installed wheel.
cd "$venv"
SOFTPROMPT_BIN="$CARGO_TARGET_DIR/debug/softprompt" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/crates/softprompt-py/tests"
echo "python_tests: done in $((SECONDS - start)) s"
