"""Pure protocol conversion between Anthropic Messages and OpenAI Chat Completions (no I/O)."""
