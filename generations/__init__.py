"""The generation domain, pure: requests, the catalog, the plan, the AGENTIC decisions, the
flow and the record. No I/O; see docs/GENERATIONS.md."""
