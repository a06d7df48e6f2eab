#!/usr/bin/env bash
# Install a real Triton Inference Server (2.51, python backend, CPU) for the serving tests, idempotently.
#
# The server comes from the nvidia-pytriton wheel, which carries the tritonserver binary, its libraries, the
# python backend and a backend stub per Python version. It gets its own virtual environment because the 2.51
# python backend needs numpy < 2 (the stub crashes deserializing BYTES tensors with numpy 2). That environment
# also holds what our python-backend models import: tokenizers and jinja2 (pre/postprocessing) and torch plus
# this package (the `reference` variant of tensorrt_llm runs the torch backend).
#
# Result, under $TRT_GEMMA4_TRITON_HOME (default: <repo>/.cache/tritonserver):
#   venv/                  the server's Python environment
#   backends/python/       libtriton_python.so + the stub for that venv's Python
#   bin/tritonserver       a wrapper that sets LD_LIBRARY_PATH/PATH as the stub needs, then runs the binary
# Usage: bash scripts/install_tritonserver.sh        (PYTHON=python3.X to choose the interpreter)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${TRT_GEMMA4_TRITON_HOME:-$ROOT/.cache/tritonserver}
PY=${PYTHON:-python3}
PYTRITON_VERSION=0.7.0   # embeds tritonserver 2.51.0
TORCH_VERSION=2.13.0     # same pin as the test environment (scripts/test.sh)
STAMP="$DEST/.installed-pytriton$PYTRITON_VERSION-torch$TORCH_VERSION"

if [ -f "$STAMP" ] && [ -x "$DEST/bin/tritonserver" ] &&
   [ "$("$DEST/venv/bin/python" -c 'import pathlib, trt_gemma4; print(pathlib.Path(trt_gemma4.__file__).parents[1])' \
        2>/dev/null)" = "$ROOT" ]; then
  echo "tritonserver: already installed in $DEST"
  exit 0
fi
start=$(date +%s)
mkdir -p "$DEST"
[ -x "$DEST/venv/bin/python" ] || "$PY" -m venv "$DEST/venv"
VPY="$DEST/venv/bin/python"

# The stub embeds libpython: it must find this interpreter's shared library (pyenv builds need --enable-shared).
LIBDIR=$("$VPY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
LDLIB=$("$VPY" -c 'import sysconfig; print(sysconfig.get_config_var("LDLIBRARY"))')
PYVER=$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ ! -e "$LIBDIR/$LDLIB" ] || [[ "$LDLIB" != *.so* ]]; then
  echo "install_tritonserver: $PY has no shared libpython ($LIBDIR/$LDLIB); the Triton python backend stub needs one" \
       "(build Python with --enable-shared, or use the distribution's python3 with libpython$PYVER)" >&2
  exit 1
fi

"$VPY" -m pip install -q --upgrade pip
# torch pinned (a bare `torch` may resolve to a multi-GB CUDA build), numpy < 2 for the 2.51 stub.
"$VPY" -m pip install -q "torch==$TORCH_VERSION" "numpy<2" safetensors tokenizers jinja2 tqdm
# Only the server binary and its libraries are used, not PyTriton's Python API: no dependencies (installed last,
# so pip's consistency check does not list the API's missing dependencies).
"$VPY" -m pip install -q --no-deps "nvidia-pytriton==$PYTRITON_VERSION"
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# This source tree on the server's path (the reference model imports trt_gemma4), without building anything.
echo "$ROOT" > "$SITE/trt_gemma4_source.pth"
DIST="$SITE/pytriton/tritonserver"
STUB="$DIST/python_backend_stubs/$PYVER/triton_python_backend_stub"
if [ ! -x "$STUB" ]; then
  echo "install_tritonserver: nvidia-pytriton $PYTRITON_VERSION has no python backend stub for Python $PYVER" >&2
  exit 1
fi
rm -rf "$DEST/backends"
mkdir -p "$DEST/backends" "$DEST/bin"
cp -r "$DIST/backends/python" "$DEST/backends/python"
cp "$STUB" "$DEST/backends/python/triton_python_backend_stub"

cat > "$DEST/bin/tritonserver" <<EOF
#!/usr/bin/env bash
# tritonserver 2.51 (CPU) from nvidia-pytriton $PYTRITON_VERSION, written by scripts/install_tritonserver.sh.
# The stub needs this interpreter's libpython first on LD_LIBRARY_PATH and the server venv's python3 first on PATH.
export LD_LIBRARY_PATH="$LIBDIR:$SITE/nvidia_pytriton.libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PATH="$DEST/venv/bin:\$PATH"
exec "$DIST/bin/tritonserver" --backend-directory="$DEST/backends" --cache-directory="$DIST/caches" "\$@"
EOF
chmod +x "$DEST/bin/tritonserver"

# Smoke check: the binary loads all its libraries (its --help exits 1, so look at what it prints).
help_text=$("$DEST/bin/tritonserver" --help 2>&1 || true)
[[ "$help_text" == *--model-repository* ]] || { echo "install_tritonserver: $DEST/bin/tritonserver does not run" >&2; exit 1; }
rm -f "$DEST"/.installed-*
touch "$STAMP"
echo "tritonserver: installed in $DEST ($(( $(date +%s) - start )) s)"
