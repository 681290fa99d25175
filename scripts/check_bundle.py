"""Check a device bundle (scripts/device_bundle.sh): every need of vegan and of each wheel is met there.

    .venv/bin/python scripts/check_bundle.py [.device-bundle]

The device machine has its own Python 3.12 with torch and a fixed set of packages (DEVICE_HAS) and no
package registry, so whatever it lacks travels as wheels. This reads each wheel's METADATA and fails,
naming them, when a requirement (markers evaluated for CPython 3.12 on Linux, extras skipped) is
neither in the bundle nor on the device, when a version the device is known to have does not match,
when a package comes twice, when one of pyproject.toml's dependencies is not covered (or listed in
NOT_NEEDED, with the reason), or when the working tree plus the bundle exceed what travels (64 MiB).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
TRAVEL_LIMIT = 64 * 2**20  # the working tree that travels to the device, carried paths included

# The device image's packages, as its documentation listed them on 2026-11-17.
DEVICE_HAS = {
    canonicalize_name(n)
    for n in """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
    onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
    pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
    pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
    scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
    tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
    wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
}
# Versions seen there (python3 -m pip list, 2026-11); other packages' versions are unknown.
DEVICE_VERSIONS = {"numpy": "2.5.2", "torch": "2.11.0", "torchvision": "0.26.0", "triton": "3.6.0",
                   "onnxruntime": "1.30.0", "onnx": "1.23.1", "safetensors": "0.8.0"}  # fmt: skip
# pyproject dependencies the GPU check does not import on the device, and why.
NOT_NEEDED = {
    "prefect": "the library never imports it (tests/test_layering.py); the check calls vegan directly",
    "fastapi": "Prefect's server only",
    "sqlalchemy": "Prefect's server only",
    "s3fs": "runs use a local folder there; fsspec loads s3fs only for s3:// URLs",
    "openvino": "a CPU inference backend for TF-Inception; on CUDA the eval runs TF-Inception on torch",
}
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}  # fmt: skip


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    reqs = [Requirement(r) for r in msg.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(ENV)]


def tree_bytes() -> int:
    """Bytes of what travels besides the bundle: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")  # fmt: skip
    return sum((ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file())


def check(bundle: Path) -> list[str]:
    problems = []
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    have: dict[str, str] = {}
    for w in wheels:
        name, version, _, _ = parse_wheel_filename(w.name)
        if name in have:
            problems.append(f"{name} comes twice ({have[name]} and {version}): pip --target refuses that")
        have[name] = str(version)
    for w in wheels:
        for r in wheel_requirements(w):
            name = canonicalize_name(r.name)
            if name in have:
                if not r.specifier.contains(have[name], prereleases=True):
                    problems.append(f"{w.name} needs {r}, the bundle has {name} {have[name]}")
            elif name in DEVICE_HAS:
                known = DEVICE_VERSIONS.get(name)
                if known and not r.specifier.contains(known, prereleases=True):
                    problems.append(f"{w.name} needs {r}, the device has {name} {known}")
            else:
                problems.append(f"{w.name} needs {r}: neither in the bundle nor on the device")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        if name not in have and name not in DEVICE_HAS and name not in NOT_NEEDED:
            problems.append(f"pyproject dependency {dep} is neither in the bundle nor on the device")
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    total = size + tree_bytes()
    print(f"bundle {size / 2**20:.1f} MiB in {len(wheels)} wheels and data; with the working tree "
          f"{total / 2**20:.1f} MiB of the {TRAVEL_LIMIT / 2**20:.0f} MiB that travel")  # fmt: skip
    if total > TRAVEL_LIMIT:
        problems.append(f"working tree + bundle = {total / 2**20:.1f} MiB > {TRAVEL_LIMIT / 2**20:.0f} MiB")
    for name, why in NOT_NEEDED.items():
        print(f"not bundled: {name} ({why})")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    problems = check(Path(argv[0]) if argv else ROOT / ".device-bundle")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if not problems:
        print("every requirement is met by the bundle or the device")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
