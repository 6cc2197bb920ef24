"""``histo.rpc.v1``: generated from ``proto/histo/rpc/v1/search.proto``; do not edit by hand.

Regenerate with ``scripts/gen_proto.sh``; ``tests/unit/test_proto_drift.py`` fails when these files
and the ``.proto`` disagree.
"""
