#!/usr/bin/env bash
# Generate the Python code of proto/histo/rpc/v1/*.proto into histo/rpc/v1/ (committed).
#
#   scripts/gen_proto.sh            # regenerate in place (run after editing a .proto)
#   scripts/gen_proto.sh OUT_DIR    # generate into OUT_DIR/histo/rpc/v1/ (the drift test does this)
#
# PYTHON picks the interpreter (default: the repository's .venv, else python3); its grpcio-tools
# version decides the generated code, so use the one pyproject.toml pins.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(mkdir -p "${1:-$repo}" && cd "${1:-$repo}" && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
cd "$repo"
# `python -m grpc_tools.protoc` adds grpc_tools' bundled well-known types (google/protobuf/*.proto).
"$python" -m grpc_tools.protoc -Iproto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/histo/rpc/v1/search.proto
