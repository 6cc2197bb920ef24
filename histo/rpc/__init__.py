"""Generated gRPC code of ``proto/histo/rpc`` (committed; regenerate with ``scripts/gen_proto.sh``)."""
