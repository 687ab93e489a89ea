"""Fenced code blocks of Markdown pages, the test directives above them, and a runner for one page.

Directives are one-line HTML comments on the line(s) just before a fence::

    <!-- test: skip because <reason> -->   never run (the reason is required)
    <!-- test: slow -->                    run only in the slow suite (``pytest -m slow``)
    <!-- test: env NAME=VALUE ... -->      environment variables for this block

Anything else after ``<!-- test:`` is an error, as is a directive not directly above a fence or above a
block that is never run (``text``, ``console``, ...). ``python`` blocks of a page run in order in one
namespace; ``bash`` blocks run one command per line (a trailing backslash continues it) in one shell
per block, stopping at the first failing line. Everything runs in the current directory.

Run a page (what ``tests/test_docs.py`` does in a subprocess): ``python _doc_blocks.py spec.json``.
"""

__all__ = ["Block", "DirectiveError", "parse_page", "bash_commands", "RUN_LANGUAGES"]

import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

#: Fence languages that are executed, and how.
RUN_LANGUAGES = {"python": "python", "py": "python", "python3": "python", "bash": "bash", "sh": "bash", "shell": "bash"}

_DIRECTIVE_START = re.compile(r"^\s*<!--\s*test\b")
_DIRECTIVE = re.compile(r"^\s*<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DirectiveError(ValueError):
    """A malformed, unknown or misplaced ``<!-- test: ... -->`` directive, or an unclosed fence."""


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its code and its directives."""

    page: str
    line: int  # 1-based line number of the first line of code (the line after the fence)
    language: str
    code: str
    skip_reason: str = None
    slow: bool = False
    env: dict = field(default_factory=dict)

    @property
    def kind(self):
        """``"python"``, ``"bash"`` or None (never run)."""
        return RUN_LANGUAGES.get(self.language.lower())

    @property
    def where(self):
        return f"{self.page}:{self.line}"


def parse_page(text, page="<page>"):
    """All fenced code blocks of a Markdown ``text``, with their directives.

    >>> blocks = parse_page("<!-- test: slow -->\\n```python\\nx = 1\\n```\\n")
    >>> blocks[0].line, blocks[0].kind, blocks[0].slow
    (3, 'python', True)
    """
    lines = text.splitlines()
    blocks, pending, i = [], [], 0
    while i < len(lines):
        line = lines[i]
        if _DIRECTIVE_START.match(line):
            pending.append((i + 1, _parse_directive(line, f"{page}:{i + 1}")))
            i += 1
            continue
        opening = _FENCE.match(line)
        if not opening:
            if pending:
                raise DirectiveError(f"{page}:{pending[0][0]}: test directive is not on the line just before a code block.")
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = (opening["info"].split() or [""])[0]
        body, j = [], i + 1
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while j < len(lines) and not closing.match(lines[j]):
            body.append(_dedent(lines[j], indent))
            j += 1
        if j == len(lines):
            raise DirectiveError(f"{page}:{i + 1}: code fence {fence} is never closed.")
        options = _combine(pending)
        if pending and RUN_LANGUAGES.get(language.lower()) is None:
            raise DirectiveError(f"{page}:{pending[0][0]}: test directive above a {language or 'plain'!r} block, which is never run.")
        blocks.append(Block(page=page, line=i + 2, language=language, code="\n".join(body) + "\n", **options))
        pending, i = [], j + 1
    if pending:
        raise DirectiveError(f"{page}:{pending[0][0]}: test directive is not on the line just before a code block.")
    return blocks


def _parse_directive(line, where):
    match = _DIRECTIVE.match(line)
    if not match:
        raise DirectiveError(f"{where}: malformed test directive {line.strip()!r}; write it on one line as <!-- test: ... -->.")
    body = match["body"]
    word, _, rest = body.partition(" ")
    if word == "skip":
        reason = rest.strip()
        if reason.startswith("because"):
            reason = reason[len("because"):].strip()
        else:
            reason = ""
        if not reason:
            raise DirectiveError(f"{where}: a skipped block needs a reason: <!-- test: skip because <reason> -->.")
        return ("skip_reason", reason)
    if word == "slow" and not rest.strip():
        return ("slow", True)
    if word == "env":
        env = {}
        for item in shlex.split(rest):
            name, equals, value = item.partition("=")
            if not equals or not _ENV_NAME.match(name):
                raise DirectiveError(f"{where}: env directive needs NAME=VALUE pairs, got {item!r}.")
            env[name] = value
        if not env:
            raise DirectiveError(f"{where}: env directive needs at least one NAME=VALUE.")
        return ("env", env)
    raise DirectiveError(f"{where}: unknown test directive {body!r}; use 'skip because <reason>', 'slow' or 'env NAME=VALUE'.")


def _combine(pending):
    options = {}
    for _, (key, value) in pending:
        if key == "env":
            options.setdefault("env", {}).update(value)
        else:
            options[key] = value
    return options


def _dedent(line, indent):
    stripped = len(line) - len(line.lstrip(" "))
    return line[min(indent, stripped):]


def bash_commands(block):
    """``[(file line, command)]`` of a bash block: blank and comment-only lines dropped, continuations joined.

    >>> bash_commands(Block("p.md", 10, "bash", "# note\\n\\nls -l\\n"))
    [(12, 'ls -l')]
    """
    commands, current, start = [], None, None
    for offset, line in enumerate(block.code.splitlines()):
        if current is None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            current, start = "", block.line + offset
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        commands.append((start, (current + line).strip()))
        current = None
    if current is not None:
        commands.append((start, current.strip()))
    return commands


def _bash_script(block):
    lines = ["set -o pipefail"]
    for line, command in bash_commands(block):
        failed = shlex.quote(f"FAILED {block.page}:{line} (bash block): {command}")
        lines.append(command)
        lines.append(f'__doc_status=$?; if [ "$__doc_status" -ne 0 ]; then printf "%s\\n  exited with status %s\\n" {failed} '
                     '"$__doc_status" >&2; exit "$__doc_status"; fi')
    return "\n".join(lines) + "\n"


def run_blocks(spec):
    """Run the blocks of ``spec`` (a dict from :func:`main`'s JSON) in order; return an exit status."""
    namespace = {"__name__": "__main__"}
    for item in spec["blocks"]:
        block = Block(**item)
        print(f"== {block.where} ({block.kind} block)", flush=True)
        saved = dict(os.environ)
        os.environ.update(block.env)
        try:
            if block.kind == "python":
                source = "\n" * (block.line - 1) + block.code  # tracebacks name the page's own line numbers
                try:
                    exec(compile(source, spec["path"], "exec"), namespace)  # noqa: S102 - running the docs is the point
                except BaseException:  # noqa: BLE001 - report any failure of the user's code, then stop
                    sys.stdout.flush()
                    print(f"FAILED {block.where} (python block):", file=sys.stderr)
                    traceback.print_exc()
                    return 1
            else:
                status = subprocess.run(["bash", "-c", _bash_script(block)], check=False).returncode
                if status != 0:
                    return status
        finally:
            os.environ.clear()
            os.environ.update(saved)
        sys.stdout.flush()
    return 0


def main(argv):
    spec = json.loads(Path(argv[1]).read_text())
    return run_blocks(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
