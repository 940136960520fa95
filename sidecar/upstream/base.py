"""What every upstream adapter shares: the request and event types, HTTP error mapping, SSE reading."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.errors import DuoError, ErrorCode


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class CompletionParams:
    max_tokens: int = 0
    temperature: float | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: str
    input_tokens: int
    output_tokens: int
    usage_estimated: bool


Event = TextDelta | Finished


@dataclass(frozen=True)
class UpstreamRequest:
    """One HTTP request to an upstream, and how to read its answer."""

    endpoint_key: str  # circuit breaker and in-flight limit are per endpoint
    description: str  # names the upstream in errors, never holds secrets
    url: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]
    protocol: str  # "openai_sse" or "raw_text"
    secret: str = field(default="", repr=False)  # scrubbed from any upstream text we repeat

    def redact(self, text: str, limit: int) -> str:
        """Upstream text fit to repeat in an error: no part of this request's secret, at most `limit` characters."""
        return redact(text, (self.secret,), limit)


REDACTED = "[redacted]"
# Any piece of a secret at least this long is redacted wherever it appears: an upstream that echoes part of a key
# (a log excerpt, "key ending in ...", a line cut short) must not hand that part to a caller.
SECRET_FRAGMENT_CHARACTERS = 8


def redact(text: str, secrets: Iterable[str], limit: int | None = None) -> str:
    """`text` with every secret, and every piece of one SECRET_FRAGMENT_CHARACTERS or more long, replaced by
    [redacted]; then cut to `limit` characters. Redacting before cutting: a cut never leaves part of a secret.

    The one helper for any upstream text (answers, stream lines, exception text) that goes into an error, a test
    result or a log line. A secret shorter than the fragment length is redacted where it appears whole.
    """
    secrets = [secret for secret in secrets if secret]
    if limit is not None:
        # What lies this far past the cut is cut anyway, and a secret that starts before the cut ends before
        # here: redacting the rest would only cost time (an upstream line can be long).
        text = text[: limit + max((len(secret) for secret in secrets), default=0)]
    hidden = bytearray(len(text))  # 1 under every character that belongs to a secret (or a piece of one)
    for secret in secrets:
        size = min(SECRET_FRAGMENT_CHARACTERS, len(secret))
        pieces = {secret[i : i + size] for i in range(len(secret) - size + 1)}
        for start in range(len(text) - size + 1):
            if text[start : start + size] in pieces:
                hidden[start : start + size] = b"\x01" * size
    if any(hidden):
        parts: list[str] = []
        position = 0
        while position < len(text):
            end = position
            if hidden[position]:
                while end < len(text) and hidden[end]:
                    end += 1
                parts.append(REDACTED)
            else:
                while end < len(text) and not hidden[end]:
                    end += 1
                parts.append(text[position:end])
            position = end
        text = "".join(parts)
    return text if limit is None else text[:limit]


def estimate_tokens(text: str) -> int:
    """Rough token count (4 characters a token) for upstreams that report no usage."""
    return (len(text) + 3) // 4


def upstream_error(
    code: ErrorCode, reason: str, request: UpstreamRequest, message: str, http_status: int = 0
) -> DuoError:
    metadata = {"upstream": request.description, "endpoint": request.endpoint_key}
    if http_status:
        metadata["http_status"] = str(http_status)
    return DuoError(code, reason, message, metadata=metadata)


def _excerpt(text: str, request: UpstreamRequest) -> str:
    return request.redact(" ".join(text.split()), 300)


def error_for_status(request: UpstreamRequest, status: int, body: str) -> DuoError:
    """Maps an upstream HTTP error to the status a caller can act on."""
    said = _excerpt(body, request)
    detail = f"{request.description} answered HTTP {status}" + (f": {said}" if said else "")
    if status in (401, 403):
        return upstream_error(
            ErrorCode.FAILED_PRECONDITION,
            "UPSTREAM_CREDENTIALS_REJECTED",
            request,
            f"{detail}. Its credentials were refused; an admin must fix the API token or cloud connector token",
            status,
        )
    if status == 429:
        return upstream_error(
            ErrorCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", request, f"{detail}. Retry later", status
        )
    if status == 404:
        return upstream_error(
            ErrorCode.FAILED_PRECONDITION,
            "UPSTREAM_NOT_FOUND",
            request,
            f"{detail}. Check the model's endpoint and identifier",
            status,
        )
    if status in (400, 413, 422):
        return upstream_error(
            ErrorCode.INVALID_ARGUMENT,
            "UPSTREAM_REJECTED_REQUEST",
            request,
            f"{detail}. The request was refused",
            status,
        )
    return upstream_error(ErrorCode.UNAVAILABLE, "UPSTREAM_ERROR", request, detail, status)


def retryable_status(status: int) -> bool:
    return status in (500, 502, 503, 504)


def malformed(request: UpstreamRequest, what: str) -> DuoError:
    return upstream_error(
        ErrorCode.UNAVAILABLE,
        "UPSTREAM_PROTOCOL_ERROR",
        request,
        f"{request.description} sent a malformed stream: {what}",
    )


class OpenAIStream:
    """Reads an OpenAI chat-completions SSE stream (vLLM, Azure OpenAI) as its bytes arrive.

    `feed` takes whatever the connection delivered and returns the text of the complete lines in it, so chunks
    that arrived together go out as one delta (a gRPC message saved, never a wait for more); `end` takes the
    end of the body. Plain methods, no generator per stage: this runs once per chunk of every completion.
    """

    def __init__(self, request: UpstreamRequest) -> None:
        self.request = request
        self.finish_reason = ""
        self.input_tokens = self.output_tokens = 0
        self.usage_reported = False
        self.done = False  # [DONE] was read: nothing after it counts
        self.produced: list[str] = []
        self._partial = b""

    def feed(self, data: bytes) -> str:
        """The text the complete lines of `data` (after what is buffered) carry; '' for none."""
        lines = (self._partial + data).split(b"\n") if self._partial else data.split(b"\n")
        self._partial = lines.pop()
        return self._text_of_lines(lines)

    def end(self) -> tuple[str, Finished]:
        """At the end of the body (or after [DONE]): the text of an unterminated last line, and how it finished."""
        request = self.request
        text = self._text_of_lines([self._partial]) if self._partial and not self.done else ""
        self._partial = b""
        if not self.done and not self.finish_reason:
            raise upstream_error(
                ErrorCode.UNAVAILABLE,
                "UPSTREAM_STREAM_BROKEN",
                request,
                f"{request.description} closed the stream before the completion finished",
            )
        input_tokens, output_tokens = self.input_tokens, self.output_tokens
        if not self.usage_reported:
            prompt = "".join(str(m.get("content", "")) for m in request.body.get("messages", []))
            input_tokens, output_tokens = estimate_tokens(prompt), estimate_tokens("".join(self.produced))
        finished = Finished(
            self.finish_reason or "stop", input_tokens, output_tokens, usage_estimated=not self.usage_reported
        )
        return text, finished

    def _text_of_lines(self, lines: list[bytes]) -> str:
        texts = []
        for line in lines:
            if self.done:
                break
            if not line:
                continue  # the blank line after every event
            text = self.text_of(line)
            if text:
                texts.append(text)
        if not texts:
            return ""
        text = texts[0] if len(texts) == 1 else "".join(texts)
        self.produced.append(text)
        return text

    def text_of(self, raw: bytes) -> str:
        """The generated text one SSE line carries ('' for none); records finish reason, usage and [DONE]."""
        if raw.startswith(b"data: {"):  # the usual line: parsed straight from bytes
            try:
                chunk = orjson.loads(memoryview(raw)[6:])
            except ValueError:
                pass  # the general path below reports it
            else:
                if isinstance(chunk, dict):
                    return self._text_of_chunk(chunk)
        request = self.request
        line = raw.decode("utf-8", errors="replace").strip()
        if not line or line.startswith(":") or line.startswith(("event:", "id:", "retry:")):
            return ""
        if not line.startswith("data:"):
            raise malformed(request, f"unexpected line {request.redact(line, 80)!r}")
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return ""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise malformed(request, f"invalid JSON {request.redact(data, 80)!r}") from None
        if not isinstance(chunk, dict):
            raise malformed(request, "a chunk is not a JSON object")
        return self._text_of_chunk(chunk)

    def _text_of_chunk(self, chunk: dict[str, Any]) -> str:
        request = self.request
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise upstream_error(
                ErrorCode.UNAVAILABLE,
                "UPSTREAM_ERROR",
                request,
                f"{request.description} reported an error mid-stream: {_excerpt(str(message), request)}",
            )
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = int(usage.get("prompt_tokens") or 0)
            self.output_tokens = int(usage.get("completion_tokens") or 0)
            self.usage_reported = True
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise malformed(request, "'choices' is not a list")
        text = ""
        for choice in choices[:1]:
            delta = choice.get("delta") or {}
            text = (delta.get("content") if isinstance(delta, dict) else None) or ""
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return text


class RawTextStream:
    """Reads the AI Gateway's prompt stream: raw UTF-8 text chunks, no usage. Same interface as OpenAIStream."""

    done = False  # the body's end is the only end

    def __init__(self, request: UpstreamRequest) -> None:
        self.request = request
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self.produced: list[str] = []

    def feed(self, data: bytes) -> str:
        try:
            text = self._decoder.decode(data)
        except UnicodeDecodeError:
            raise malformed(self.request, "the text is not UTF-8") from None
        if text:
            self.produced.append(text)
        return text

    def end(self) -> tuple[str, Finished]:
        tail = self.feed_final()
        inputs = self.request.body.get("inputs", {})
        prompt = "".join(str(m.get("content", "")) for m in inputs.get("messages", []))
        finished = Finished(
            "stop", estimate_tokens(prompt), estimate_tokens("".join(self.produced)), usage_estimated=True
        )
        return tail, finished

    def feed_final(self) -> str:
        try:
            tail = self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise malformed(self.request, "the text is not UTF-8") from None
        if tail:
            self.produced.append(tail)
        return tail


def stream_reader(request: UpstreamRequest) -> OpenAIStream | RawTextStream:
    """The reader for the protocol of `request`'s answer."""
    return OpenAIStream(request) if request.protocol == "openai_sse" else RawTextStream(request)
