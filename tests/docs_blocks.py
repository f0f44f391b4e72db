"""The fenced code blocks of README.md and docs/*.md, as `tests/test_docs.py` runs them.

A block is a *command* block when its language is a shell's or Python's. Each one is run by the
docs test unless the line right before it says why it cannot be, in an HTML comment (invisible
once rendered):

    <!-- not run: needs a Docker engine -->
    <!-- tested: tests/batch/test_images.py -->   (that test runs the block's code as written)

Other blocks (YAML specs, JSON answers, file trees, logs) are not commands; a JSON block right
after a command block is that command's expected output, and so are `# {...` comment lines that
end a shell block (`...` stands for anything).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SHELL = frozenset({"bash", "sh", "shell", "console"})
PYTHON = frozenset({"python"})
COMMANDS = SHELL | PYTHON
NOT_COMMANDS = frozenset({"", "text", "yaml", "json", "toml", "dockerfile"})

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*(?P<kind>not run|tested):\s*(?P<what>.*?)\s*-->$")
# Never run here, marked or not: they change the virtualenv or need what this machine lacks.
FORBIDDEN = re.compile(r"\bpip3? (install|uninstall)\b|\bdocker |\bkubectl |\boptimum-cli ")
SERVER = re.compile(r"^(\S+=\S+ )*(\S*python\S* -m serving\b|make run\b)")


@dataclass(frozen=True)
class Block:
    doc: str  # the file, relative to the repository
    line: int  # the line of its opening fence
    lang: str
    text: str
    marker: tuple[str, str] | None  # ("not run", reason) | ("tested", test file) | None
    after_command: bool  # only blank lines between this block and a command block before it

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in COMMANDS and self.marker is None


def parse(path: Path, root: Path) -> list[Block]:
    """Every fenced block of a markdown file, in order."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i, end_of_last = 0, -10
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang, start = len(fence["indent"]), fence["lang"].lower(), i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        before = [line.strip() for line in lines[end_of_last + 1 : start]]
        marker = _marker(lines[start - 1].strip()) if start else None
        previous = blocks[-1] if blocks else None
        after = previous is not None and previous.runs and not any(before)
        text = "\n".join(body) + "\n"
        blocks.append(Block(str(path.relative_to(root)), start + 1, lang, text, marker, after))
        end_of_last = i
        i += 1
    return blocks


def _marker(line: str) -> tuple[str, str] | None:
    found = MARKER.match(line)
    return (found["kind"], found["what"]) if found else None


def logical_lines(script: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines dropped."""
    commands, current = [], ""
    for raw in script.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        command = re.sub(r"\s+#.*$", "", current).strip()
        if command and not command.startswith("#"):
            commands.append(command)
        current = ""
    return commands


def forbidden(block: Block) -> bool:
    """A shell block with a command that must never run here (comments aside)."""
    return block.lang in SHELL and any(FORBIDDEN.search(c) for c in logical_lines(block.text))


def is_server_block(block: Block) -> bool:
    """A block whose every command starts the service (it runs until stopped)."""
    commands = logical_lines(block.text)
    return block.lang in SHELL and bool(commands) and all(SERVER.match(c) for c in commands)


def shown_output(script: str) -> str | None:
    """The output a shell block shows in the comment lines that end it (`# {"a": ...}`)."""
    lines = script.rstrip("\n").splitlines()
    tail: list[str] = []
    while lines and lines[-1].lstrip().startswith("#"):
        tail.insert(0, lines.pop().lstrip()[1:].strip())
    if not tail or not tail[0].startswith(("{", "[")):
        return None
    return "".join(tail)


def matches_shown(shown: str, output: str) -> bool:
    """Whether output is what the docs show, `...` matching anything."""
    pattern = ".*?".join(re.escape(part) for part in shown.split("..."))
    return re.fullmatch(pattern, output.strip(), re.DOTALL) is not None
