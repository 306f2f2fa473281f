#!/usr/bin/env bash
# Generates sentinel/generated from protos/ in one compiler call (the generated code uses
# relative imports). With --check, fails if the committed code is stale instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$root/protos"
python -m grpc_tools.protoc -I . --python_betterproto2_out="$tmp" \
  --python_betterproto2_opt=client_generation=async,server_generation=async \
  $(find . -name '*.proto' | sed 's|^\./||' | sort) >/dev/null
if [ "${1:-}" = "--check" ]; then
  if ! diff -r -x __pycache__ "$tmp" "$root/sentinel/generated"; then
    echo "sentinel/generated is stale: run 'nox -s proto' and commit the result" >&2
    exit 1
  fi
  echo "generated protobuf code is up to date"
else
  rm -rf "$root/sentinel/generated"
  cp -r "$tmp" "$root/sentinel/generated"
  echo "regenerated sentinel/generated"
fi
