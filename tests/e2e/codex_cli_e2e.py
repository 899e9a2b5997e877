"""End-to-end check: the real Codex CLI runs a command through the gateway and fake-upstream.

Run: ``python tests/e2e/codex_cli_e2e.py [--protocol openai|anthropic|both]
[--task command|patch] [--keep]``

The twin of ``claude_code_e2e.py`` (whose process, config and check helpers it reuses) for
the Responses ingress. For each provider protocol it starts ``python -m gateway serve`` with
one provider pointing at ``python -m gateway fake-upstream --scenario run_command``, makes a
``team`` user and a key with the operator CLI, and runs ``codex exec`` with a fresh
``CODEX_HOME`` whose ``config.toml`` names the gateway as a custom model provider
(``wire_api = "responses"``, ``env_key``; docs/openai-clients.md explains every line). The
fake answers the first turn with one ``exec_command`` call whose command writes the file,
and the turn that carries the command's output with "Done.". A protocol passes when Codex
exits 0, the file holds the fake's content, the fake saw the tool-call turn and the
tool-result turn on the protocol's endpoint, and every ``usage_logs`` row is a successful
``responses`` row.

The CLI comes from npm (``@openai/codex``, pinned to ``CODEX_VERSION``; about 400 MB with
its native binary), installed once into ``${XDG_CACHE_HOME:-~/.cache}/llmapi/codex``. The
native binary ships in the optional dependency ``@openai/codex-linux-x64`` (or -arm64)
under ``vendor/<target>/bin/codex``.

``--task patch`` has the fake answer with a call to Codex's free-form ``apply_patch`` tool
(fake scenario ``apply_patch``: ``{"input": "*** Begin Patch ... *** Add File: P ..."}``
upstream), which the gateway hands Codex as a ``custom_tool_call`` with the raw patch; the
dry path then offers ``apply_patch`` as a ``custom`` tool with a Lark grammar, as Codex does
for models it gives the free-form tool to, applies the patch's Add File hunk itself and
sends ``custom_tool_call_output`` back.

``--dry-run`` needs neither npm nor the CLI: the script plays Codex with the ``openai`` SDK,
sending a body shaped like Codex 0.171's (``stream: true``, ``store: false``, the system
prompt as ``developer`` input items, function tools, a ``namespace`` group and the built-in
``web_search`` tool, ``include: ["reasoning.encrypted_content"]``), runs the command itself
and sends the ``function_call_output`` back. The checks are the same. The test suite always
runs the dry path; ``LLMAPI_E2E=1`` makes it run the real CLI too.

Exit status: 0 when every protocol passed, 1 when one failed, 2 when the CLI is unavailable.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: make `gateway` and `tests` importable

from tests.e2e.claude_code_e2e import (  # noqa: E402
    EXIT_UNAVAILABLE,
    GENERATION_ENDPOINTS,
    PROTOCOLS,
    UPSTREAM_ENDPOINT,
    USER_EMAIL,
    CliUnavailable,
    E2EError,
    Outcome,
    Processes,
    check,
    gateway_config,
    http_json,
    logged_errors,
    run_gateway_cli,
    sigterm_as_exit,
)
from tests.helpers.gateway import free_port, wait_for_port  # noqa: E402

CODEX_VERSION = "0.171.0"
NPM_PACKAGE = f"@openai/codex@{CODEX_VERSION}"
# Not in Codex's own model catalogue: Codex then offers plain function tools (CODEX_CLI.md).
MODEL = "qwen3-coder-plus"


def cache_dir() -> Path:
    import os
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmapi" / "codex"


def find_codex_binary(prefix: Path) -> Path | None:
    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "x64"
    vendor = prefix / "node_modules" / "@openai" / f"codex-linux-{arch}" / "vendor"
    for candidate in sorted(vendor.glob("*/bin/codex")) if vendor.is_dir() else []:
        if candidate.is_file():
            return candidate
    return None


def install_codex(prefix: Path) -> Path:
    """The Codex binary, installed with npm into `prefix` on the first call only."""
    found = find_codex_binary(prefix)
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise CliUnavailable("npm is not installed; it is needed once to fetch Codex CLI")
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
                           NPM_PACKAGE], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise CliUnavailable(f"npm install failed ({done.returncode}): {done.stderr[-2000:]}")
    found = find_codex_binary(prefix)
    if found is None:
        raise CliUnavailable(f"npm installed {NPM_PACKAGE} but no native binary was found")
    return found


def codex_config(base_url: str, model: str = MODEL) -> str:
    """CODEX_HOME/config.toml: the gateway as a custom Responses provider, nothing else
    (no update check, analytics, feedback, plugins or apps: they would reach out)."""
    return "\n".join([
        f'model = "{model}"',
        'model_provider = "llmapi"',
        "check_for_update_on_startup = false",
        "[model_providers.llmapi]",
        'name = "llmapi"',
        f'base_url = "{base_url}/v1"',
        'env_key = "LLMAPI_API_KEY"',
        'wire_api = "responses"',
        "request_max_retries = 0",
        "stream_max_retries = 0",
        "[analytics]", "enabled = false",
        "[feedback]", "enabled = false",
        "[features]", "plugins = false", "apps = false", "",
    ])


def run_codex(binary: Path, base_url: str, key: str, home: Path, target: Path,
              timeout: int, task: str = "command", model: str = MODEL) -> Outcome:
    """`codex exec` as CODEX_CLI.md runs it: env -i, fresh CODEX_HOME, stdin closed."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(codex_config(base_url, model))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "CODEX_HOME": str(home),
           "LLMAPI_API_KEY": key, "TERM": "dumb", "NO_PROXY": "127.0.0.1,localhost"}
    argv = ["timeout", "--kill-after=10", str(timeout), str(binary), "exec", "--json",
            "--strict-config", "--skip-git-repo-check", "--ephemeral",
            "-s", "danger-full-access", "-C", str(target.parent),
            f"Create the file {target} containing a greeting"
            + (" with the apply_patch tool." if task == "patch" else ".")]
    shown = " ".join(f"{k}={shlex.quote('sk-llmapi-…' if k == 'LLMAPI_API_KEY' else v)}"
                     for k, v in env.items())
    print(f"  $ env -i {shown} {shlex.join(argv)} < /dev/null", flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, cwd=target.parent, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired as exc:
        raise E2EError(f"Codex still running after {timeout + 30}s") from exc
    return Outcome(target, done.returncode, done.stdout, done.stderr,
                   time.monotonic() - started, "codex")


def codex_shaped_request(target: Path) -> dict[str, Any]:
    """The first turn as Codex 0.171 sends it, cut down to what the gateway must handle."""
    exec_command = {"type": "function", "name": "exec_command",
                    "description": "Runs a command in a PTY, returning output.",
                    "strict": False,
                    "parameters": {"type": "object", "properties": {
                        "cmd": {"type": "string", "description": "Shell command to execute."},
                        "workdir": {"type": "string"}}, "required": ["cmd"],
                        "additionalProperties": False}}
    return {
        "model": MODEL, "stream": True, "store": False, "parallel_tool_calls": False,
        "tool_choice": "auto", "include": ["reasoning.encrypted_content"],
        "reasoning": None, "prompt_cache_key": "00000000-e2e",
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "You are a coding agent running in "
                                                        "the Codex CLI."}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "<environment_context>\n  <cwd>"
                          f"{target.parent}</cwd>\n</environment_context>"}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text",
                          "text": f"Create the file {target} containing a greeting."}]},
        ],
        "tools": [exec_command,
                  {"type": "namespace", "name": "agents", "description": "sub-agents",
                   "tools": [{"type": "function", "name": "spawn_agent", "strict": False,
                              "parameters": {"type": "object", "properties": {}}}]},
                  {"type": "web_search", "external_web_access": False}],
    }


# Codex's free-form apply_patch tool, as its tool spec sends it (openai/codex,
# `create_apply_patch_freeform_tool` in codex-rs, `tools/src/apply_patch_tool.rs` in recent
# versions: type "custom", format grammar / lark, "Well-suited for GPT-5 models"), with the
# grammar cut down to its first rules.
APPLY_PATCH_TOOL = {
    "type": "custom", "name": "apply_patch",
    "description": "Use the `apply_patch` tool to edit files. This is a FREEFORM tool, so "
                   "do not wrap the patch in JSON.",
    "format": {"type": "grammar", "syntax": "lark", "definition": (
        'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\n'
        'end_patch: "*** End Patch" LF?\nhunk: add_hunk | delete_hunk | update_hunk\n'
        'add_hunk: "*** Add File: " filename LF add_line+\nadd_line: "+" /(.*)/ LF -> line\n')},
}


def apply_add_file(patch: str) -> Path:
    """Play Codex's apply_patch for the one kind of hunk the fake sends (Add File)."""
    lines = patch.splitlines()
    if not lines or lines[0] != "*** Begin Patch" or lines[-1] != "*** End Patch" \
            or not lines[1].startswith("*** Add File: "):
        raise E2EError(f"not an Add File patch: {patch!r}")
    path = Path(lines[1].removeprefix("*** Add File: "))
    body = [line[1:] for line in lines[2:-1] if line.startswith("+")]
    path.write_text("".join(f"{line}\n" for line in body))
    return path


def without_stream(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "stream"}


def run_sdk_turns(base_url: str, key: str, target: Path, task: str = "command") -> Outcome:
    """Play Codex with the openai SDK: stream turn 1, run the command (or apply the patch),
    send its output."""
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=60)
    body = codex_shaped_request(target)
    started = time.monotonic()
    if task == "patch":
        return run_sdk_patch_turns(client, body, target, started)
    try:
        # responses.stream() sets `stream: true` itself, as Codex's body has it
        with client.responses.stream(**without_stream(body)) as stream:
            first = stream.get_final_response()
    except openai.APIError as exc:
        raise E2EError(f"turn 1 failed: {exc!r}") from exc
    calls = [item for item in first.output if item.type == "function_call"]
    if first.status != "completed" or len(calls) != 1 or calls[0].name != "exec_command":
        raise E2EError(f"turn 1: expected one exec_command call, got status={first.status} "
                       f"output={[item.type for item in first.output]}")
    call = calls[0]
    command = json.loads(call.arguments).get("cmd", "")
    ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                         cwd=target.parent, timeout=30)  # the exec_command tool, played by us
    body["input"] += [
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id,
         "output": f"Process exited with code {ran.returncode}\nOutput:\n{ran.stdout}"},
    ]
    try:
        with client.responses.stream(**without_stream(body)) as stream:
            second = stream.get_final_response()
    except openai.APIError as exc:
        raise E2EError(f"turn 2 (function_call_output) failed: {exc!r}") from exc
    return Outcome(target, 0, second.output_text + "\n", "", time.monotonic() - started, "sdk")


def run_sdk_patch_turns(client: Any, body: dict[str, Any], target: Path,
                        started: float) -> Outcome:
    """The patch task: one custom_tool_call of apply_patch, applied, its output sent back."""
    import openai

    body["tools"] = [APPLY_PATCH_TOOL, *body["tools"]]
    try:
        with client.responses.stream(**without_stream(body)) as stream:
            first = stream.get_final_response()
    except openai.APIError as exc:
        raise E2EError(f"turn 1 failed: {exc!r}") from exc
    calls = [item for item in first.output if item.type == "custom_tool_call"]
    if first.status != "completed" or len(calls) != 1 or calls[0].name != "apply_patch":
        raise E2EError(f"turn 1: expected one apply_patch custom_tool_call, got status="
                       f"{first.status} output={[item.type for item in first.output]}")
    call = calls[0]
    written = apply_add_file(call.input)
    body["input"] += [
        {"type": "custom_tool_call", "call_id": call.call_id, "name": call.name,
         "input": call.input},
        {"type": "custom_tool_call_output", "call_id": call.call_id,
         "output": f"Success. Updated the following files:\nA {written}\n"},
    ]
    try:
        with client.responses.stream(**without_stream(body)) as stream:
            second = stream.get_final_response()
    except openai.APIError as exc:
        raise E2EError(f"turn 2 (custom_tool_call_output) failed: {exc!r}") from exc
    return Outcome(target, 0, second.output_text + "\n", "", time.monotonic() - started, "sdk")


def ingress_rows(db_path: Path) -> list[str]:
    import contextlib
    import sqlite3
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return [r[0] for r in db.execute("SELECT ingress FROM usage_logs ORDER BY id")]


def run_protocol(protocol: str, procs: Processes, fake_port: int, codex: Path | None,
                 timeout: int, task: str = "command",
                 model: str = MODEL) -> tuple[bool, str]:
    """Gateway + user + key for one protocol, then the CLI (or the SDK), then the checks."""
    workdir = procs.workdir / protocol
    (workdir / "project").mkdir(parents=True)
    db_path = workdir / "llmapi.db"
    port = free_port()
    config = workdir / "llmapi.toml"
    config.write_text(gateway_config(protocol, fake_port, port, db_path))
    fake = f"http://127.0.0.1:{fake_port}"
    http_json(fake + "/_fake/reset", "POST")
    gateway = procs.start(f"gateway-{protocol}", "serve", "--config", str(config))
    try:
        wait_for_port(port, gateway)
    except (RuntimeError, TimeoutError) as exc:
        raise E2EError(f"gateway did not start: {exc}\n"
                       f"{procs.log_tail(f'gateway-{protocol}')}") from exc
    run_gateway_cli(config, "users", "add", USER_EMAIL, "--plan", "team")
    key = run_gateway_cli(config, "keys", "add", USER_EMAIL, "--name", "e2e").strip()
    target = workdir / "project" / "hello.txt"
    base_url = f"http://127.0.0.1:{port}"
    if codex is None:
        outcome = run_sdk_turns(base_url, key, target, task)
    else:
        outcome = run_codex(codex, base_url, key, workdir / "home", target, timeout, task,
                            model)
    stats = http_json(fake + "/_fake/stats")
    problems = check(protocol, outcome, stats, db_path)
    ingresses = ingress_rows(db_path)
    if set(ingresses) != {"responses"}:
        problems.append(f"usage rows' ingress {ingresses}, expected only 'responses'")
    _, path = UPSTREAM_ENDPOINT[protocol]
    generations = [r for r in stats.get("history", [])
                   if r.get("endpoint") in GENERATION_ENDPOINTS]
    detail = (f"{outcome.client_label} made {len(ingresses)} POST /v1/responses, upstream saw "
              f"{len(generations)} {path}, {outcome.seconds:.1f}s")
    procs.stop(gateway)
    problems += logged_errors(procs.log_path(f"gateway-{protocol}"))
    if problems:
        detail += "\n    " + "\n    ".join(problems)
        detail += f"\n  CLI stdout: {outcome.stdout.strip()[-1500:]!r}"
        detail += f"\n  CLI stderr: {outcome.stderr.strip()[-1500:]!r}"
        detail += "\n  gateway log tail:\n" + procs.log_tail(f"gateway-{protocol}")
    return not problems, detail


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="codex_cli_e2e.py",
        description="Run the real Codex CLI through the gateway against fake-upstream.")
    parser.add_argument("--protocol", choices=[*PROTOCOLS, "both"], default="both",
                        help="provider protocol between gateway and fake (default: both)")
    parser.add_argument("--task", choices=["command", "patch"], default="command",
                        help="command: the fake calls exec_command; patch: it calls the "
                             "free-form apply_patch tool (default: command)")
    parser.add_argument("--model", default=MODEL,
                        help=f"the model name Codex asks for (default {MODEL}, outside its "
                             "catalogue; a catalogue name such as gpt-5-codex makes Codex "
                             "offer its free-form apply_patch tool)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (configs, databases, logs)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no CLI: send Codex-shaped requests with the openai SDK")
    parser.add_argument("--codex", type=Path, default=None,
                        help="use this codex binary instead of the npm-installed one")
    parser.add_argument("--timeout", type=int, default=120,
                        help="seconds the CLI may run per protocol (default 120)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    codex: Path | None = None
    if not args.dry_run:
        try:
            codex = args.codex or install_codex(cache_dir())
            print(f"Codex CLI at {codex}", flush=True)
        except CliUnavailable as exc:
            print(f"FAIL: Codex CLI unavailable: {exc}", flush=True)
            return EXIT_UNAVAILABLE
    workdir = Path(tempfile.mkdtemp(prefix="llmapi-codex-e2e-"))
    procs = Processes(workdir)
    results: dict[str, bool] = {}
    with sigterm_as_exit():
        try:
            fake_port = free_port()
            fake = procs.start("fake-upstream", "fake-upstream", "--port", str(fake_port),
                               "--scenario",
                               "apply_patch" if args.task == "patch" else "run_command")
            try:
                wait_for_port(fake_port, fake)
            except (RuntimeError, TimeoutError) as exc:
                print(f"FAIL: fake-upstream did not start: {exc}\n"
                      f"{procs.log_tail('fake-upstream')}", flush=True)
                return 1
            for protocol in protocols:
                try:
                    passed, detail = run_protocol(protocol, procs, fake_port, codex,
                                                  args.timeout, args.task, args.model)
                except E2EError as exc:
                    passed, detail = False, str(exc)
                results[protocol] = passed
                mode = " (dry run, SDK)" if codex is None else ""
                print(f"{'PASS' if passed else 'FAIL'} {protocol}{mode}: {detail}", flush=True)
        finally:
            procs.stop_all()
            if args.keep:
                print(f"kept {workdir}", flush=True)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    return 0 if results and all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
