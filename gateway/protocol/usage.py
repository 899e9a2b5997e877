"""Token usage of one exchange, in Anthropic terms (what billing and quotas count)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Usage:
    """Token counts as the client sees them.

    `input_tokens` excludes cache reads, as in Anthropic's API, so
    `input_tokens + cache_read_input_tokens` is the upstream prompt total.
    `thinking_tokens` is the reasoning part of `output_tokens` (already counted there).
    `estimated` is True when the upstream reported nothing and the figures were guessed.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    thinking_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """Everything that counts against a quota."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_input_tokens
            + self.cache_creation_input_tokens
        )
