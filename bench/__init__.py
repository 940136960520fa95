"""`make bench`: ResolveModel throughput and latency against a no-op grpc.aio floor (DESIGN section 6)."""
