#!/usr/bin/env bash
# Builds a workspace binary as a static executable into the calling image's .build/:
#   build-static.sh PACKAGE BINARY     (from an image folder: its prepare script cds there)
set -euo pipefail
package=$1 binary=$2
image_dir=$PWD
root=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
  --manifest-path "$root/Cargo.toml" -p "$package" --target "$target"
mkdir -p "$image_dir/.build"
cp -p "$root/target/$target/release/$binary" "$image_dir/.build/$binary.new"
mv "$image_dir/.build/$binary.new" "$image_dir/.build/$binary"
