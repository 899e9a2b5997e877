"""Pure protocol conversion between Anthropic Messages and OpenAI Chat Completions (no I/O).
Imports nothing else of gateway (tests/test_layout.py holds it to that).
The rules these modules implement, section by section: docs/protocol.md."""
