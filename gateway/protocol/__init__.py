"""Pure protocol conversion between Anthropic Messages and OpenAI Chat Completions (no I/O).
Imports nothing else of gateway (tests/test_layout.py holds it to that)."""
