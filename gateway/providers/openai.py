"""Provider for `protocol = "openai"`: any Chat Completions endpoint (DashScope, DeepSeek, ...).

Request: Anthropic body -> OpenAI body (gateway.protocol.openai_request).
Reply: non-stream JSON converted whole; a stream converted read by read by
`OpenAIStreamConverter`, so each upstream byte is parsed exactly once.
"""

from __future__ import annotations

import time

import orjson

from gateway.config import ProviderConfig
from gateway.protocol.cache_normalize import normalize_volatile_system
from gateway.protocol.openai_request import OpenAIOptions, effective_model, to_openai_request
from gateway.protocol.openai_response import (
    FinishFailure,
    anthropic_error_from_openai,
    error_from_payload,
    to_anthropic_message,
)
from gateway.protocol.openai_stream import OpenAIStreamConverter
from gateway.protocol.upstream_checks import chat_completion_problem
from gateway.protocol.usage import Usage
from gateway.providers.base import Call, Reply, UpstreamError
from gateway.providers.http import (
    BufferedReply,
    UpstreamResponse,
    UpstreamStream,
    client_session,
    malformed_answer,
    open_upstream,
    read_body,
    status_error,
    transport_error,
)


class OpenAIStreamReply(UpstreamStream):
    """An upstream Chat Completions stream, converted to Anthropic SSE as it arrives."""

    def __init__(self, response: UpstreamResponse, converter: OpenAIStreamConverter,
                 provider: str) -> None:
        self._conv = converter
        super().__init__(response, provider)

    def _on_data(self, data: bytes) -> bytes:
        return self._conv.feed(data)

    def _on_eof(self) -> bytes:
        return self._conv.finish()

    def _complete(self) -> bool:
        return self._conv.done

    def _early_failure(self) -> UpstreamError | None:
        """An error event before any content (OpenRouter sends HTTP 200, then the error):
        passed on with the status its code means, retried elsewhere only if that helps."""
        conv = self._conv
        if conv.error is None or conv.usage.output_tokens:
            return None
        if conv.error_payload is not None:
            status, error_type, message, retryable = error_from_payload(conv.error_payload)
        else:
            status, error_type, message, retryable = 502, "api_error", conv.error[1], True
        return UpstreamError(self._provider, "stream_error", message, client_status=status,
                             error_type=error_type, retryable=retryable)

    @property
    def usage(self) -> Usage:
        return self._conv.usage

    @property
    def failed(self) -> tuple[str, str] | None:
        return self._conv.error

    def abort(self, error_type: str, message: str) -> bytes:
        return self._conv.abort(error_type, message)


class OpenAIProvider:
    """Talks Chat Completions to one configured upstream."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.url = config.base_url + "/chat/completions"
        self._session = client_session(config)
        self._auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}

    def options_for(self, upstream_model: str) -> OpenAIOptions:
        c = self.config
        return OpenAIOptions(
            max_output_tokens=c.max_output_tokens.get(upstream_model)
            or c.max_output_tokens.get("default"),
            reasoning=c.reasoning, reasoning_model=c.reasoning_model, send_top_k=c.send_top_k,
            send_files=c.send_files)

    async def send(self, call: Call) -> Reply:
        source = normalize_volatile_system(call.body) if self.config.normalize_prompt_cache \
            else call.body
        # The reasoning model (when thinking switches to one) is the model of record: its
        # output limit clamps max_tokens and its name goes on the usage row (pricing).
        model = effective_model(source, call.upstream_model, self.options_for(""))
        payload = to_openai_request(source, model, self.options_for(model))
        call.upstream_model = payload["model"]
        headers = {"Content-Type": "application/json", **self._auth}
        call.sent_at = call.sent_at or time.perf_counter()
        response = await open_upstream(self._session, self.config, self.url,
                                       orjson.dumps(payload), headers)
        if response.status != 200:
            body = await read_body(response, self.config)
            raise status_error(self.config.name, response.status,
                               anthropic_error_from_openai(response.status, body),
                               response.headers.get("retry-after"), body)
        if not call.stream:
            return self._complete(call, await read_body(response, self.config))
        if response.content_type == "application/json":
            # A stream request answered with a JSON body: an error in an HTTP 200.
            raw = await read_body(response, self.config)
            raise self._error_in_200(raw)
        conv = OpenAIStreamConverter(call.client_model, call.message_id, call.input_estimate)
        reply = OpenAIStreamReply(response, conv, self.config.name)
        await reply.start(self.config)
        return reply

    def _complete(self, call: Call, raw: bytes) -> BufferedReply:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise malformed_answer(self.config.name, "the answer is not JSON") from None
        if isinstance(body, dict) and "error" in body and "choices" not in body:
            raise self._error_in_200(raw)
        problem = chat_completion_problem(body)
        if problem is not None:
            raise malformed_answer(self.config.name, problem)
        stop = call.body.get("stop_sequences")
        try:
            message, usage = to_anthropic_message(body, call.client_model, call.message_id,
                                                  stop if isinstance(stop, list) else None)
        except FinishFailure as exc:
            # Nothing is sent yet, so another provider may still give a complete answer.
            raise UpstreamError(self.config.name, "incomplete", exc.message,
                                client_status=529 if exc.error_type == "overloaded_error"
                                else 502, error_type=exc.error_type, retryable=True) from None
        return BufferedReply(orjson.dumps(message), usage)

    def _error_in_200(self, raw: bytes) -> UpstreamError:
        """An HTTP 200 whose body is an error (OpenRouter documents this for errors that
        happen once the model started): its message and code decide what the client gets."""
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = {"error": {"message": raw[:500].decode("utf-8", "replace")}}
        status, error_type, message, retryable = error_from_payload(payload)
        return UpstreamError(self.config.name, "error_in_200", message, client_status=status,
                             error_type=error_type, retryable=retryable)

    async def post_chat(self, call: Call, payload: bytes) -> UpstreamResponse:
        """POST a Chat Completions body unchanged (the OpenAI ingress, gateway/api/
        openai_ingress.py) and return the 200 response; any other status raises."""
        headers = {"Content-Type": "application/json", **self._auth}
        call.sent_at = call.sent_at or time.perf_counter()
        response = await open_upstream(self._session, self.config, self.url, payload, headers)
        if response.status != 200:
            body = await read_body(response, self.config)
            raise status_error(self.config.name, response.status,
                               anthropic_error_from_openai(response.status, body),
                               response.headers.get("retry-after"), body)
        if call.stream and response.content_type == "application/json":
            raise self._error_in_200(await read_body(response, self.config))
        return response

    async def count_tokens(self, call: Call) -> int | None:
        return None

    async def close(self) -> None:
        await self._session.close()


__all__ = ["OpenAIProvider", "transport_error"]
