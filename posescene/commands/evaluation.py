"""CLI sub-commands for the evaluation area (see docs/architecture.md)."""
