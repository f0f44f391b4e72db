"""The docs are tested: every command block of README.md and docs/*.md runs as written.

Each guide runs in a working copy of its own (the packages, `models/`, Makefile, pyproject.toml
and a `.venv` that links to the test's virtualenv, whose bin folder leads PATH, as after
`source .venv/bin/activate`). Its blocks run in order: shell blocks in bash with `set -eo
pipefail` and a `curl` that fails on an HTTP error, Python blocks in one interpreter per guide.
A block that starts the service (`python -m serving ...`, `make run`) starts it in the
background, waits until it is ready and keeps it for the blocks that follow. Ports 8080 and
8081 are replaced by free ones, in the commands and through `SERVING_PORT`. Where a guide shows
what a command prints, the output must match. A block that cannot run here says why, in a
marker the first test checks (see `tests/docs_blocks.py`).
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from tests import byom
from tests.conftest import REPO
from tests.docs_blocks import (
    COMMANDS,
    NOT_COMMANDS,
    SHELL,
    Block,
    forbidden,
    is_server_block,
    logical_lines,
    matches_shown,
    parse,
    shown_output,
)

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COPIED = ("models", "Makefile", "pyproject.toml", "inference", "serving", "batch", "training")
IGNORED = shutil.ignore_patterns("__pycache__", ".tmp-*")
RUNNER = REPO / "tests" / "docs_python.py"
TIMEOUT_S = 300
PRELUDE = """set -eo pipefail
curl() { command curl --fail-with-body --show-error "$@"; }
"""


def blocks(doc: Path) -> list[Block]:
    return parse(doc, REPO)


def test_every_command_block_is_run_or_says_why_not():
    problems = []
    for doc in DOCS:
        for block in blocks(doc):
            if block.lang not in COMMANDS | NOT_COMMANDS:
                problems.append(f"{block.where}: unknown language {block.lang!r}")
            elif block.marker and block.lang not in COMMANDS:
                problems.append(f"{block.where}: a marker before a block that is not a command")
            elif block.marker and not block.marker[1]:
                problems.append(f"{block.where}: '{block.marker[0]}:' needs a reason or a test")
            elif block.runs and forbidden(block):
                problems.append(f"{block.where}: cannot run here; mark it <!-- not run: why -->")
            elif block.marker and block.marker[0] == "tested":
                test = REPO / block.marker[1]
                if not test.is_file() or f"tested: {block.marker[1]}" not in test.read_text():
                    problems.append(f"{block.where}: {block.marker[1]} does not run this block")
    assert not problems, "\n".join(problems)


def test_the_docs_mark_few_blocks_not_run():
    skipped = [b.where for d in DOCS for b in blocks(d) if b.marker and b.marker[0] == "not run"]
    assert len(skipped) <= 12, skipped


# What a guide takes for granted that no block makes: the user's own exported models.
def _byom_models(work: Path) -> None:
    byom.tokens(work / "models", vocabulary=1000)
    byom.digits_cnn(work / "models")


def _my_export(work: Path) -> None:
    version = byom.tokens(work / "scratch", vocabulary=1000)
    (work / "my_export").mkdir()
    shutil.move(version / "model.onnx", work / "my_export" / "model.onnx")


GIVEN: dict[str, Callable[[Path], None]] = {
    "README.md": _my_export,
    "docs/inference.md": _byom_models,
    "docs/batch-tensors.md": _byom_models,
    "docs/bring-your-own-model.md": _byom_models,
}


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_the_commands_of_a_guide_run_as_written(doc: Path, tmp_path: Path):
    guide = Guide(tmp_path)
    given = GIVEN.get(str(doc.relative_to(REPO)))
    if given:
        given(guide.work)
    try:
        for block in blocks(doc):
            start = time.monotonic()
            guide.run(block)
            print(f"{block.where}: {time.monotonic() - start:.1f} s")  # shown with -s
    finally:
        guide.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Guide:
    """A working copy where one guide's blocks run, with its service and its Python."""

    def __init__(self, tmp: Path) -> None:
        self.work = tmp / "work"
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.work.mkdir()
        for name in COPIED:
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, self.work / name, ignore=IGNORED)
            else:
                shutil.copy2(REPO / name, self.work / name)
        self._link_venv()
        self.ports = {"8080": str(free_port()), "8081": str(free_port())}
        path = f"{self.work / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVING_")}
        # One torch thread: on a machine shared by several jobs, torch's two spinning threads
        # made a 20-epoch training of side_effects take 114 s instead of 19 s.
        self.env = {**env, "PATH": path, "SERVING_PORT": self.ports["8080"], "OMP_NUM_THREADS": "1"}
        self.server: subprocess.Popen[bytes] | None = None
        self.python: subprocess.Popen[bytes] | None = None
        self.results: IO[str] | None = None
        self.last_output: str | None = None

    def _link_venv(self) -> None:
        """`.venv` of links into this interpreter's virtualenv, with `make`'s install stamps
        fresh, so that `make run` installs nothing."""
        venv = self.work / ".venv"
        venv.mkdir()
        for entry in Path(sys.prefix).iterdir():
            if not entry.name.startswith(".installed"):
                (venv / entry.name).symlink_to(entry)
        for stamp in (".installed-run", ".installed-test"):
            (venv / stamp).touch()

    def text(self, block: Block) -> str:
        text = block.text
        for port, free in self.ports.items():
            text = text.replace(port, free)
        return text

    def run(self, block: Block) -> None:
        if block.lang == "json" and block.after_command:
            self.check_json(block)
        if not block.runs:
            return
        assert not forbidden(block), f"{block.where}: mark it '<!-- not run: why -->'"
        self.last_output = None
        if is_server_block(block):
            commands = logical_lines(self.text(block))
            for i, command in enumerate(commands):
                self.start_server(block, command)
                if i < len(commands) - 1:
                    self.stop_server()
        elif block.lang in SHELL:
            self.run_shell(block)
        else:
            self.run_python(block)

    def run_shell(self, block: Block) -> None:
        done = subprocess.run(
            ["bash", "-c", PRELUDE + self.text(block)],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        report = f"{block.where} failed (exit {done.returncode}):\n{block.text}\n"
        assert done.returncode == 0, report + (done.stdout + done.stderr)[-4000:]
        self.last_output = done.stdout
        shown = shown_output(block.text)
        if shown is not None:
            assert matches_shown(shown, done.stdout), (
                f"{block.where}: the docs show\n{shown}\nbut it printed\n{done.stdout}"
            )

    def check_json(self, block: Block) -> None:
        assert self.last_output is not None, f"{block.where}: no output from the block before"
        shown, got = json.loads(block.text), json.loads(self.last_output)
        assert close(shown, got), f"{block.where}: the docs show\n{block.text}\nbut got\n{got}"

    def start_server(self, block: Block, command: str) -> None:
        self.stop_server()
        log = self.logs / f"server-{block.line}.log"
        with log.open("wb") as out:
            self.server = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.work,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        port = next((p for p in self.ports.values() if f"--port {p}" in command), None)
        url = f"http://127.0.0.1:{port or self.ports['8080']}/v2/health/ready"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                pytest.fail(f"{block.where}: `{command}` exited:\n{log.read_text()[-4000:]}")
            if ready(url):
                return
            time.sleep(0.2)
        pytest.fail(f"{block.where}: `{command}` not ready in 120 s:\n{log.read_text()[-4000:]}")

    def stop_server(self) -> None:
        if self.server is None:
            return
        stop(self.server)
        self.server = None

    def run_python(self, block: Block) -> None:
        if self.python is None:
            self.start_python()
        assert self.python is not None and self.python.stdin is not None
        assert self.results is not None
        log = self.logs / "python.log"
        start = log.stat().st_size
        message = {"name": block.where, "code": self.text(block)}
        self.python.stdin.write((json.dumps(message) + "\n").encode())
        self.python.stdin.flush()
        readable, _, _ = select.select([self.results], [], [], TIMEOUT_S)
        line = self.results.readline() if readable else ""
        output = log.read_bytes()[start:].decode(errors="replace")[-4000:]
        assert line, f"{block.where}: no answer in {TIMEOUT_S} s (or Python died):\n{output}"
        answer = json.loads(line)
        assert answer["ok"], f"{block.where} failed:\n{answer['error']}\noutput:\n{output}"

    def start_python(self) -> None:
        read, write = os.pipe()
        with (self.logs / "python.log").open("wb") as out:
            self.python = subprocess.Popen(
                [str(self.work / ".venv/bin/python"), str(RUNNER), str(write)],
                cwd=self.work,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(write,),
                start_new_session=True,
            )
        os.close(write)
        self.results = os.fdopen(read)

    def close(self) -> None:
        self.stop_server()
        if self.python is not None:
            assert self.python.stdin is not None
            self.python.stdin.close()
            stop(self.python, grace_s=60)
        if self.results is not None:
            self.results.close()


def stop(process: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """SIGTERM to the process's group (started with a session of its own), then SIGKILL."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def close(shown: Any, got: Any) -> bool:
    """Equal JSON, numbers within 1e-3 (training on another machine rounds differently)."""
    if isinstance(shown, dict):
        return (
            isinstance(got, dict)
            and shown.keys() == got.keys()
            and all(close(shown[k], got[k]) for k in shown)
        )
    if isinstance(shown, list):
        return isinstance(got, list) and len(shown) == len(got) and all(map(close, shown, got))
    if isinstance(shown, float) and isinstance(got, int | float):
        return math.isclose(shown, got, rel_tol=1e-3, abs_tol=1e-3)
    return bool(shown == got)
