"""Runtimes that serve histo over the network (gRPC search service)."""
