"""The gRPC search service: server, servicer and the one table of error codes."""
