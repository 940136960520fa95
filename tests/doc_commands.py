"""Runs the `duo-admin` commands that Markdown pages show in ```console blocks, as written, against real sidecars.

A page marks where a fresh sidecar starts with an HTML comment (invisible when rendered):

    <!-- doc-test: deployment=self_managed upstream=127.0.0.1:8000 files=vllm-api-token -->

- `deployment`: the sidecar's instance.deployment_type (required);
- `upstream`: HOST:PORT where an OpenAI-compatible server (like vLLM) answers "OK" to every chat completion, for
  `duo-admin test-model` and `duo-admin complete` examples;
- `files`: comma-separated file names created (with a dummy secret) in the directory the commands run in, such as
  the API token file a `--api-token-file` example reads.
- `instance`: comma-separated `key:value` pairs of the sidecar's `[instance]` keys beyond the deployment type,
  such as `instance=self_hosted_ai_gateway:true` (set through DUO_SIDECAR_INSTANCE_<KEY>).

Every console block after a marker belongs to that marker's session; sessions run in order of the page, each on a
fresh database. In a block, `$ duo-admin ...` is a command (a trailing backslash continues it on the next line) and
the lines after it are output the real output must contain, whitespace folded; `...` stands for lines left out (with
`whole_outputs`, as for the README, the output must be shown whole but for the `...`, in order). A
shown `error:` line first means the command must fail. Generated ids cannot be known in advance: a shown
`id: <value>` line matches the real id, and later commands and output lines of the session get the real id in
place of the shown one, so the page can use the id it showed.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import StartSidecar
from tests.helpers import BIN
from tests.upstreams import MockUpstream

MARKER = re.compile(r"<!--\s*doc-test:(?P<settings>.*?)-->", re.DOTALL)
CONSOLE_BLOCK = re.compile(r"^```console\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)
GENERATED_FIELDS = ("id",)
ELISION = "..."
DUMMY_SECRET = "doc-test-dummy-secret-0123456789"
UPSTREAM_ANSWER = "OK"


@dataclass
class ShownCommand:
    argv: list[str]
    expected: list[str] = field(default_factory=list)  # the output lines shown, without `...`
    shown: list[str] = field(default_factory=list)  # the same with each `...` where it stands

    @property
    def text(self) -> str:
        return shlex.join(self.argv)

    @property
    def must_fail(self) -> bool:
        return bool(self.expected) and self.expected[0].startswith("error:")


@dataclass
class Session:
    """The commands that run against one fresh sidecar."""

    deployment: str
    line: int  # of the marker, for messages
    upstream: str = ""
    files: list[str] = field(default_factory=list)
    commands: list[ShownCommand] = field(default_factory=list)
    instance: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        return {f"DUO_SIDECAR_INSTANCE_{key.upper()}": value for key, value in self.instance.items()}


def _marker_settings(text: str, line: int) -> Session:
    settings: dict[str, str] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or key not in ("deployment", "upstream", "files", "instance"):
            raise ValueError(
                f"line {line}: doc-test marker: expected deployment=, upstream=, files= or instance=, got {item!r}"
            )
        settings[key] = value
    if "deployment" not in settings:
        raise ValueError(f"line {line}: doc-test marker without deployment=")
    files = [name for name in settings.get("files", "").split(",") if name]
    instance = dict(pair.split(":", 1) for pair in settings.get("instance", "").split(",") if pair)
    return Session(settings["deployment"], line, settings.get("upstream", ""), files, instance=instance)


def shown_commands(block: str) -> list[ShownCommand]:
    """The commands of one console block, with the output lines shown after each."""
    commands: list[ShownCommand] = []
    pending = ""  # a command continued with a trailing backslash
    for line in block.splitlines():
        if pending or line.startswith("$ "):
            text = pending + (line[2:] if not pending else line.strip())
            if text.endswith("\\"):
                pending = text[:-1].rstrip() + " "
                continue
            pending = ""
            commands.append(ShownCommand(shlex.split(text)))
        elif line.strip():
            if not commands:
                raise ValueError(f"console block shows output before any command: {line!r}")
            commands[-1].shown.append(ELISION if line.strip() == ELISION else line)
            if line.strip() != ELISION:
                commands[-1].expected.append(line)
    if pending:
        raise ValueError(f"console block ends in a continued command: {pending!r}")
    return commands


def sessions(markdown: str) -> list[Session]:
    """The page's sessions in order; a console block before any marker is an error."""
    events = sorted(
        [(m.start(), "marker", m) for m in MARKER.finditer(markdown)]
        + [(m.start(), "block", m) for m in CONSOLE_BLOCK.finditer(markdown)],
        key=lambda event: event[0],
    )
    found: list[Session] = []
    for position, kind, match in events:
        line = markdown.count("\n", 0, position) + 1
        if kind == "marker":
            found.append(_marker_settings(match.group("settings"), line))
        elif not found:
            raise ValueError(f"line {line}: console block before any <!-- doc-test: deployment=... --> marker")
        else:
            found[-1].commands += shown_commands(match.group("body"))
    return found


def _fold(text: str) -> str:
    return " ".join(text.split())


def _field(line: str) -> tuple[str, str] | None:
    """A `key: value` line as (key, value)."""
    match = re.fullmatch(r"\s*([a-z_]+):\s+(\S+)\s*", line)
    return (match.group(1), match.group(2)) if match else None


def _substitute(text: str, bindings: dict[str, str]) -> str:
    for shown, real in bindings.items():
        text = text.replace(shown, real)
    return text


@contextmanager
def openai_compatible_upstream(address: str) -> Iterator[MockUpstream]:
    """An OpenAI-compatible server on address, answering UPSTREAM_ANSWER, in a thread of its own.

    SO_REUSEPORT lets test runs that happen at the same time on one machine each serve the page's fixed port (they
    answer alike); a port held by anything else skips the page, except in CI, where it fails.
    """
    host, _, port = address.rpartition(":")
    upstream = MockUpstream(chunks=[UPSTREAM_ANSWER], usage=(15, 1))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"upstream {address}", daemon=True)
    thread.start()
    runner = web.AppRunner(upstream.app(), handle_signals=False, shutdown_timeout=0.5)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, host, int(port), reuse_port=True).start()

    try:
        try:
            asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
        except OSError as exc:
            message = f"the page's upstream {address} cannot be served here: {exc}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        yield upstream
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def shows_whole_output(shown: list[str], actual: list[str], bindings: dict[str, str]) -> bool:
    """Whether `shown` is the whole of `actual` (folded lines, blank ones left out), each `...` standing for any run of
    lines, none included; a shown generated field (`id: ...`) matches any value of that field."""

    def same(line: str, real: str) -> bool:
        field_shown = _field(line)
        if field_shown is not None and field_shown[0] in GENERATED_FIELDS:
            field_real = _field(real)
            return field_real is not None and field_real[0] == field_shown[0]
        return _fold(_substitute(line, bindings)) == real

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(shown):
            return j == len(actual)
        if shown[i] == ELISION:
            return any(match(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and same(shown[i], actual[j]) and match(i + 1, j + 1)

    return match(0, 0)


@contextmanager
def patched_environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, before in saved.items():
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before


def run_session(
    session: Session, start_sidecar: StartSidecar, workdir: Path, page: str, *, whole_outputs: bool = False
) -> None:
    """Starts a fresh sidecar and runs the session's commands in order, checking what each prints.

    whole_outputs: each command's output must be shown whole, except where `...` marks lines left out (the README);
    otherwise the lines shown must be among those printed.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for name in session.files:
        (workdir / name).write_text(DUMMY_SECRET + "\n")
    with patched_environment(session.environment()):  # the sidecar process inherits it
        sidecar = start_sidecar(session.deployment)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DUO_ADMIN_")},
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DUO_ADMIN_ADDRESS": sidecar.address,
    }
    with ExitStack() as stack:
        if session.upstream:
            stack.enter_context(openai_compatible_upstream(session.upstream))
        bindings: dict[str, str] = {}
        for command in session.commands:
            where = f"{page} (session at line {session.line}): {command.text}"
            assert command.argv[0] == "duo-admin", f"{where}: console blocks run duo-admin only"
            argv = [_substitute(arg, bindings) for arg in command.argv]
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                timeout=60,
                check=False,
            )
            printed = result.stdout + result.stderr
            assert (result.returncode != 0) == command.must_fail, f"{where}: exit {result.returncode}\n{printed}"
            assert "Traceback" not in result.stderr, f"{where}:\n{printed}"
            actual = [_fold(line) for line in printed.splitlines()]
            for line in command.expected:
                shown = _field(line)
                if shown is not None and shown[0] in GENERATED_FIELDS:
                    real = [f for f in map(_field, actual) if f is not None and f[0] == shown[0]]
                    assert real, f"{where}: the page shows {line!r}, output was:\n{printed}"
                    bindings[shown[1]] = real[0][1]
                    continue
                assert _fold(_substitute(line, bindings)) in actual, (
                    f"{where}: the page shows {line!r}, output was:\n{printed}"
                )
            if whole_outputs:
                page_output = "\n".join(command.shown)
                assert shows_whole_output(command.shown, [line for line in actual if line], bindings), (
                    f"{where}: the page shows\n{page_output}\nbut the output was\n{printed}\n"
                    "(mark lines left out with ...)"
                )
