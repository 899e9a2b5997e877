"""Build the wheel, install it into a fresh virtual environment outside the checkout, and
prove the installed package works: start `python -m gateway --port P` from an empty
folder, make a user and a key with the CLI, ask the demo provider a question through the
real `anthropic` SDK, stop the server. Exits non-zero (with the reason) on any failure.

Run by .ci/run and by tests/packaging/test_wheel.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, args))}\n"
                         f"{done.stdout}\n{done.stderr}")
    return done.stdout


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the installed server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the installed server did not listen on {port} within {timeout}s")


def main() -> int:
    import anthropic  # the SDK of the interpreter running this script, not the venv's

    with tempfile.TemporaryDirectory(prefix="llmapi-wheel-") as tmp:
        work = Path(tmp)
        # an environment that cannot see the checkout
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLMAPI_CONFIG")}
        run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist",
            ROOT, cwd=work, env=env)
        wheels = sorted((work / "dist").glob("llmapi-*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"expected one wheel, found {wheels}")
        venv.create(work / "venv", with_pip=True)
        python = work / "venv" / ("Scripts" if os.name == "nt" else "bin") / "python"
        run(python, "-m", "pip", "install", "-q", wheels[0], cwd=work, env=env)
        home = work / "home"
        home.mkdir()
        located = run(python, "-c", "import gateway; print(gateway.__file__)", cwd=home, env=env)
        if str(ROOT) in located:
            raise SystemExit(f"the venv imported the checkout: {located}")
        run(python, "-m", "gateway", "users", "add", "smoke@example.com", cwd=home, env=env)
        key = run(python, "-m", "gateway", "keys", "add", "smoke@example.com",
                  cwd=home, env=env).strip()
        port = free_port()
        server = subprocess.Popen([str(python), "-m", "gateway", "--port", str(port)],
                                  cwd=home, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        try:
            wait_for_port(port, server)
            client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=key,
                                         max_retries=0)
            reply = client.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                                           messages=[{"role": "user", "content": "hello"}])
            text = "".join(b.text for b in reply.content if b.type == "text")
            if not text:
                raise SystemExit(f"the demo provider answered no text: {reply}")
            page = subprocess.run([str(python), "-c", (
                "import urllib.request,sys;"
                f"r=urllib.request.urlopen('http://127.0.0.1:{port}/');"
                "b=r.read();sys.exit(0 if b'/static/css/site.css' in b else 1)")],
                cwd=home, env=env, timeout=30)
            if page.returncode != 0:
                raise SystemExit("the installed site's home page did not render")
        finally:
            server.send_signal(signal.SIGINT)
            try:
                _, err = server.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                _, err = server.communicate()
        if server.returncode != 0:
            raise SystemExit(f"the server stopped with {server.returncode}: {err.decode()}")
        print(f"wheel smoke test passed: {wheels[0].name}, demo said {text[:40]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
