#!/usr/bin/env bash
# moontask's one entry point for people and CI. On a fresh Debian machine it
# installs what is missing (Debian packages only), builds, and then:
#   bash dev.sh demo [DIR]   the main job: hash every file under DIR (default /usr/share/doc)
#   bash dev.sh test         lint, then every test twice: ASan+UBSan build, then the normal build
#   bash dev.sh build        configure and build only (build/)
#   bash dev.sh bench [N]    the benchmark (not part of the tests)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

PACKAGES=(cmake make gcc pkg-config liblua5.4-dev lua5.4 lua-busted libssl-dev libsqlite3-dev
  libmsgpack-dev libjansson-dev python3-cryptography clang-format lua-check lua-luaossl sqlite3
  lua-cjson lua-socket)

ensure_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "dev.sh: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

build() {  # build DIR [cmake options...]
  local dir=$1
  shift
  cmake -S "$ROOT" -B "$dir" -DMT_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j2 -- --no-print-directory >/dev/null
}

lint() {
  echo "== lint: clang-format, module boundaries, luacheck"
  clang-format --dry-run --Werror engine/*.[ch] tests/c/*.[ch] bench/*.[ch]
  # Only lua_*.c know Lua; only fernet.c knows OpenSSL; only store*.c know SQLite.
  local bad
  bad=$(grep -l -E '#include <(lua|lauxlib|lualib)\.h>' engine/*.[ch] | grep -v -E 'engine/(lua_[a-z_]*\.[ch]|worker\.c|main\.c)$' || true)
  [ -z "$bad" ] || { echo "Lua headers outside the binding layer: $bad"; exit 1; }
  bad=$(grep -l '#include <openssl/' engine/*.[ch] | grep -v '^engine/fernet\.c$' || true)
  [ -z "$bad" ] || { echo "OpenSSL outside fernet.c: $bad"; exit 1; }
  bad=$(grep -l '#include <sqlite3\.h>' engine/*.[ch] | grep -v -E '^engine/store(_admin\.c|_int\.h|\.c)$' || true)
  [ -z "$bad" ] || { echo "SQLite outside store*.c: $bad"; exit 1; }
  luacheck -q lua scripts tests/spec bench
}

case "${1:-}" in
  demo)
    ensure_packages
    build build
    bash scripts/filehash/run.sh "$ROOT/build/moontask" "${2:-/usr/share/doc}"
    ;;
  test)
    ensure_packages
    lint
    echo "== ASan+UBSan build: every test"
    build build-asan -DMT_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
    (cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j2)
    echo "== normal build: every test (the benchmark is built, never run)"
    build build
    cmake --build build --target moontask_bench -- --no-print-directory >/dev/null
    cd build && ctest --output-on-failure -j2
    ;;
  build)
    ensure_packages
    build build
    ;;
  bench)
    ensure_packages
    build build
    cmake --build build --target moontask_bench -- --no-print-directory >/dev/null
    ./build/bench/moontask_bench "${@:2}"
    ;;
  *)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
