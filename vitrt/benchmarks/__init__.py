"""Latency lookup tables (build, query, refine), the throughput / latency harness, and the paper tables."""
