#!/usr/bin/env bash
# Installs this build into a temporary prefix, then configures, builds and runs
# examples/consumer against it with find_package(strata COMPONENTS torch), as a C++ user
# of strata would. Usage: consumer_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/strata-install-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in lib/cmake/strata/strataConfig.cmake lib/pkgconfig/strata.pc include/strata/engine/engine.h bin/strata; do
  [[ -e "$tmp/prefix/$f" ]] || { echo "consumer_test: the install lacks $f" >&2; exit 1; }
done
cmake -S "$src/examples/consumer" -B "$tmp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" >/dev/null
# The torch-free core through pkg-config, as a non-CMake project would use it.
PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" pkg-config --cflags --libs strata | grep -q -- "-lstrata_core"
# One rank, no launcher: strata's communicator starts a group of one.
env -u RANK -u WORLD_SIZE "$tmp/build/consumer"
