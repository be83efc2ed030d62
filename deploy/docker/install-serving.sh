#!/bin/sh
# The serving install as the images ship it: a virtual environment at PREFIX with the ecomserve package (no torch,
# no transformers), onnxruntime (cpu) or onnxruntime-gpu (gpu, never both), and the gRPC code generated from the
# protos. The Dockerfiles run it in their build stage, and `make check-deploy` runs it here and starts the services
# from the result, so the check tests what the images contain.
#
# usage: install-serving.sh SOURCE PREFIX cpu|gpu [ONNXRUNTIME_GPU_VERSION]
set -eu

source_dir=$1
prefix=$2
flavour=$3
ort_gpu_version=${4:-}
python=${PYTHON:-python3}

case $flavour in
  cpu | gpu) ;;
  *) echo "flavour must be cpu or gpu, got '$flavour'" >&2; exit 2 ;;
esac

"$python" -m venv "$prefix"
pip() { "$prefix/bin/python" -m pip --no-cache-dir --disable-pip-version-check --quiet "$@"; }
version_of() { "$prefix/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }

pip install "$source_dir"
if [ "$flavour" = gpu ]; then
  # onnxruntime-gpu ships the same `onnxruntime` module: remove the CPU build first so no file of it is left over.
  pip uninstall --yes onnxruntime
  pip install "onnxruntime-gpu==${ort_gpu_version:?the gpu flavour needs ONNXRUNTIME_GPU_VERSION}"
fi

# Generated code goes into site-packages as the package `ecomserve` (the protos' package names); grpcio-tools is
# needed only for that and is removed again, at the version that matches the installed grpcio.
site_packages=$("$prefix/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pip install "grpcio-tools==$(version_of grpcio)"
# shellcheck disable=SC2046  # one argument per proto file
"$prefix/bin/python" -m grpc_tools.protoc -I"$source_dir/protos" --python_out="$site_packages" \
  --grpc_python_out="$site_packages" $(cd "$source_dir/protos" && find . -name '*.proto' | sed 's|^\./||')
pip uninstall --yes grpcio-tools setuptools
"$prefix/bin/python" -m compileall -q "$site_packages/ecomserve"

# The export extra is not installed: a serving image must never carry torch.
if "$prefix/bin/python" -c 'import torch' 2>/dev/null; then
  echo "torch ended up in the serving install" >&2
  exit 1
fi
