# shellcheck shell=bash
# Shared by scripts/demo, scripts/test and .ci/run (source it; it defines functions only).
#
#   ensure_deps pkg...     install those of these Debian packages that are missing
#   build_jobs             number of parallel build jobs (all cores)
#   default_test_backends  the I/O backends this platform has, for COSELECT_TEST_BACKEND
#   wine_loader            the wine64 loader (wine64 on PATH, or Debian's /usr/lib/wine/wine64)
#   wine_server            wine's server, to keep one running for a whole ctest run
#
# Set COSELECT_SKIP_DEPS=1 to skip the package check (e.g. on a non-Debian system where the tools
# are already installed by other means).

# What the default preset needs (scripts/test, scripts/demo): a compiler, CMake, Ninja (the presets' generator), GoogleTest and
# range-v3 (test-only).
# shellcheck disable=SC2034 # used by the scripts that source this file
COSELECT_BUILD_DEPS=(cmake g++ ninja-build libgtest-dev librange-v3-dev)
# What the `windows` preset needs (scripts/test-windows): the mingw-w64 cross compiler (POSIX
# threads flavour), wine64 to run the results, GoogleTest's sources to cross-build it, range-v3.
# shellcheck disable=SC2034
COSELECT_WINDOWS_DEPS=(cmake ninja-build g++-mingw-w64-x86-64-posix wine64 googletest
  librange-v3-dev)

ensure_deps() {
  local pkgs=("$@")
  [[ ${COSELECT_SKIP_DEPS:-0} == 1 ]] && return 0
  if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    echo "note: not a Debian-like system; assuming these are installed: ${pkgs[*]}" >&2
    return 0
  fi

  local missing=() pkg status
  for pkg in "${pkgs[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == *" ok installed" ]] || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0

  echo "==> installing missing packages: ${missing[*]}" >&2
  local sudo=()
  if ((EUID != 0)); then
    if ! command -v sudo >/dev/null; then
      echo "error: need root (or sudo) to install: ${missing[*]}" >&2
      return 1
    fi
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${missing[@]}"
}

build_jobs() {
  nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2
}

default_test_backends() {
  if [[ $(uname -s) == Linux ]]; then
    echo "select poll epoll"
  else
    echo "select poll"
  fi
}

wine_loader() {
  command -v wine64 2>/dev/null || { [[ -x /usr/lib/wine/wine64 ]] && echo /usr/lib/wine/wine64; } ||
    command -v wine
}

wine_server() {
  command -v wineserver 2>/dev/null || { [[ -x /usr/lib/wine/wineserver64 ]] &&
    echo /usr/lib/wine/wineserver64; } || echo /usr/lib/wine/wineserver
}
