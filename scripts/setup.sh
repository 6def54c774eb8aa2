#!/usr/bin/env bash
# Set up ov3dseg in ./.venv on a Debian machine with Python 3.11: Debian packages, the torch pin, ROS 2 kilted
# wheels, all Python dependencies, and the ROS 2 interfaces (ov3dseg_ros msg/srv; tf2_msgs where missing).
# Idempotent: each step is skipped when its inputs did not change. Afterwards `. .venv/bin/activate` is all
# a user or script needs. Set OV3DSEG_CUDA=1/0 to force the CUDA/CPU variants of spconv and open3d.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3}
APT_PACKAGES=(libusb-1.0-0 libvulkan1 mesa-vulkan-drivers cmake g++ make)
cd "$ROOT"

log() { printf '[setup] %s\n' "$*"; }
stamp_ok() { [ -f "$VENV/.stamp-$1" ] && [ "$(cat "$VENV/.stamp-$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" > "$VENV/.stamp-$1"; }

# 1. Debian packages (open3d needs libusb; headless rendering needs Vulkan; the interface build needs CMake).
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Virtual environment.
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
# pip, without the machine-level index configuration's "Location ... is ignored" noise.
pip_install() {
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }
  return "${PIPESTATUS[0]}"
}

if [ -z "${OV3DSEG_CUDA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then OV3DSEG_CUDA=1; else OV3DSEG_CUDA=0; fi
fi
if [ "$OV3DSEG_CUDA" = 1 ]; then VARIANTS=(spconv-cu126 open3d); else VARIANTS=(spconv open3d-cpu); fi

# 3. Python dependencies: torch first (pinned), then everything under the same constraints.
deps_key=$(cat requirements.txt constraints.txt setup.py scripts/setup.sh | sha256sum | cut -c1-16)-$OV3DSEG_CUDA
if ! stamp_ok deps "$deps_key"; then
  log "installing torch 2.13.0 and the Python dependencies (a few minutes the first time)"
  pip_install "torch==2.13.0"
  pip_install -c constraints.txt -r requirements.txt "${VARIANTS[@]}"
  pip_install -c constraints.txt --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
  stamp_set deps "$deps_key"
fi

# 4. Environment for the ROS 2 wheels and the generated interfaces, applied by `. .venv/bin/activate`.
if ! grep -q "ov3dseg environment" "$VENV/bin/activate"; then
  cat >> "$VENV/bin/activate" <<'ACT'
# --- ov3dseg environment (scripts/setup.sh) ---
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export LD_LIBRARY_PATH="$VIRTUAL_ENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
ACT
fi
# shellcheck disable=SC1091
set +u; . "$VENV/bin/activate"; set -u

# 5. ROS 2 interfaces, built with the real rosidl tool chain into the venv prefix.
build_package() {  # name source_dir [cmake args...]
  local name=$1 src=$2; shift 2
  local key; key=$(find "$src" -maxdepth 2 \( -name '*.msg' -o -name '*.srv' -o -name CMakeLists.txt -o -name package.xml \) \
    -exec cat {} + | sha256sum | cut -c1-16)
  stamp_ok "$name" "$key" && return 0
  log "building ROS 2 interfaces: $name"
  local bdir="$ROOT/build/$name"
  rm -rf "$bdir"; mkdir -p "$bdir"
  cmake -S "$src" -B "$bdir" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
    -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF "$@" >"$bdir.log" 2>&1 \
    && cmake --build "$bdir" -j "$(nproc)" >>"$bdir.log" 2>&1 \
    && cmake --install "$bdir" >>"$bdir.log" 2>&1 \
    || { tail -n 40 "$bdir.log"; log "interface build of $name failed (full log: $bdir.log)"; exit 1; }
  stamp_set "$name" "$key"
}
if ! python -c "import tf2_msgs.msg" >/dev/null 2>&1 || [ -f "$VENV/.stamp-tf2_msgs" ]; then
  build_package tf2_msgs "$ROOT/interfaces/tf2_msgs"
fi
build_package ov3dseg_ros "$ROOT" -DOV3DSEG_INTERFACES_ONLY=ON
# rosidl writes an empty ov3dseg_ros/__init__.py next to the generated msg/srv modules; without it they form a
# portion that the source package (editable install) merges through pkgutil.extend_path.
rm -f "$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/ov3dseg_ros/__init__.py"

python -c "import ov3dseg_ros.srv, ov3dseg_ros.msg, tf2_msgs.msg" || { log "interfaces do not import"; exit 1; }
log "ready: . .venv/bin/activate"
