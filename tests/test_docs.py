"""The documentation runs as written: every python/bash block of README.md and docs/*.md, page by page.

Each page runs in a subprocess, in a fresh temporary directory, with ``MPLBACKEND=Agg`` and this
environment's ``bin`` first on ``PATH``. Directives (``<!-- test: skip because ... -->``,
``<!-- test: slow -->``, ``<!-- test: env NAME=VALUE -->``) are described in ``tests/_doc_blocks.py``.
Blocks marked slow run only with ``-m slow`` (then with the whole page); a later fast block must not
depend on a slow one.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from _doc_blocks import Block, DirectiveError, bash_commands, parse_page

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().with_name("_doc_blocks.py")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_RUNNABLE_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(python3?|py|bash|sh|shell)\b", re.MULTILINE | re.IGNORECASE)


def _page_id(page):
    return page.relative_to(REPO).as_posix()


def _cases():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        if not _RUNNABLE_FENCE.search(text):
            continue
        yield pytest.param(page, False, id=_page_id(page))
        if "<!-- test: slow" in text:
            yield pytest.param(page, True, id=f"{_page_id(page)}-with-slow-blocks", marks=pytest.mark.slow)


def run_page(page, blocks, workdir, timeout):
    """Run ``blocks`` of ``page`` in a subprocess in ``workdir``; return the CompletedProcess (stderr in stdout)."""
    spec = workdir.parent / f"{workdir.name}.spec.json"
    spec.write_text(json.dumps({"path": str(page), "blocks": [dataclasses.asdict(b) for b in blocks]}))
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), env.get("PATH", "")])
    return subprocess.run([sys.executable, str(RUNNER), str(spec)], cwd=workdir, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)


def _failure_report(result):
    """The failing block's header, its output (tail) and the failure: everything after the last ``== page:line``."""
    report = result.stdout[result.stdout.rfind("\n== ") + 1:]
    return report if len(report) <= 8000 else "...\n" + report[-8000:]


@pytest.mark.parametrize("page, with_slow", list(_cases()))
def test_code_blocks_run(page, with_slow, tmp_path):
    blocks = parse_page(page.read_text(encoding="utf-8"), _page_id(page))
    selected = [b for b in blocks if b.kind and b.skip_reason is None and (with_slow or not b.slow)]
    if not selected:
        pytest.skip(f"{_page_id(page)}: every python/bash block is marked skip or slow.")
    workdir = tmp_path / "work"
    workdir.mkdir()
    timeout = 3600 if with_slow else 600
    try:
        result = run_page(page, selected, workdir, timeout)
    except subprocess.TimeoutExpired as error:
        out = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        running = out[out.rfind("== "):].splitlines()[0] if "== " in out else "the first block"
        pytest.fail(f"{_page_id(page)}: still running after {timeout} s, in {running}; mark long blocks "
                    "<!-- test: slow -->.", pytrace=False)
    if result.returncode != 0:
        pytest.fail(f"{_page_id(page)}: a code block failed.\n{_failure_report(result)}", pytrace=False)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_directives_parse(page):
    parse_page(page.read_text(encoding="utf-8"), _page_id(page))  # raises DirectiveError naming page:line


def _autosummary_entries(rst):
    """Names listed in the ``.. autosummary::`` directives of an rst text."""
    names = []
    for block in re.findall(r"^\.\. autosummary::\n((?:(?:   .*)?\n)+)", rst, re.MULTILINE):
        names += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith(":")]
    return names


def test_api_reference_lists_every_public_name_and_subpackage():
    import openmm_flowplugin

    api = (REPO / "docs" / "api" / "index.rst").read_text(encoding="utf-8")
    listed = _autosummary_entries(api)
    assert sorted(listed) == sorted(set(openmm_flowplugin._EXPORTS) - {"systems"}), "docs/api/index.rst is out of date"
    assert ":mod:`openmm_flowplugin.systems`" in api
    modules = _autosummary_entries((REPO / "docs" / "api" / "modules.rst").read_text(encoding="utf-8"))
    package = REPO / "openmm_flowplugin"
    subpackages = {f"openmm_flowplugin.{p.parent.name}" for p in package.glob("*/__init__.py")} - {"openmm_flowplugin.cli"}
    assert subpackages <= set(modules), f"docs/api/modules.rst misses {sorted(subpackages - set(modules))}"


# --- the directive parser and the runner ---------------------------------------------------------

PAGE = """# Title

```python
x = 1
```

<!-- test: slow -->
<!-- test: env FOO=bar "BAZ=two words" -->
```bash
echo $FOO
```

<!-- test: skip because it would recurse into make -->
```bash
make demo
```

```text
not run
```

```{toctree}
api/index
```
"""


def test_parse_blocks_with_lines_languages_and_directives():
    blocks = parse_page(PAGE, "page.md")
    assert [(b.line, b.language, b.kind) for b in blocks] == [
        (4, "python", "python"), (10, "bash", "bash"), (15, "bash", "bash"), (19, "text", None), (23, "{toctree}", None)]
    assert blocks[0].code == "x = 1\n" and not blocks[0].slow and blocks[0].skip_reason is None
    assert blocks[1].slow and blocks[1].env == {"FOO": "bar", "BAZ": "two words"}
    assert blocks[2].skip_reason == "it would recurse into make"


def test_indented_fences_are_dedented():
    (block,) = parse_page("1. step\n\n   ```python\n   x = 1\n     y = 2\n   ```\n")
    assert block.code == "x = 1\n  y = 2\n"


@pytest.mark.parametrize(
    "directive, message",
    [
        ("<!-- test: skip -->", "needs a reason"),
        ("<!-- test: skip because -->", "needs a reason"),
        ("<!-- test: skip it -->", "needs a reason"),
        ("<!-- test: fast -->", "unknown test directive 'fast'"),
        ("<!-- test: slow please -->", "unknown test directive"),
        ("<!-- test: env FOO -->", "NAME=VALUE"),
        ("<!-- test: env 1X=2 -->", "NAME=VALUE"),
        ("<!-- test: slow", "malformed"),
    ],
)
def test_bad_directives_are_errors_naming_the_line(directive, message):
    with pytest.raises(DirectiveError, match=message) as error:
        parse_page(f"text\n{directive}\n```python\npass\n```\n", "p.md")
    assert str(error.value).startswith("p.md:2:")


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- test: slow -->\n\n```python\npass\n```\n", "not on the line just before"),
        ("<!-- test: slow -->\nsome text\n", "not on the line just before"),
        ("<!-- test: slow -->\n", "not on the line just before"),
        ("<!-- test: slow -->\n```text\nout\n```\n", "never run"),
        ("```python\npass\n", "never closed"),
    ],
)
def test_misplaced_directives_and_unclosed_fences_are_errors(text, message):
    with pytest.raises(DirectiveError, match=message):
        parse_page(text, "p.md")


def test_other_html_comments_are_ignored():
    (block,) = parse_page("<!-- a note -->\n```python\npass\n```\n")
    assert block.kind == "python"


def test_bash_commands_join_continuations_and_keep_file_lines():
    block = Block("p.md", 7, "bash", "# comment\nopenmm-flowplugin simulate x \\\n    --steps 10\n\nls  # list\n")
    assert bash_commands(block) == [(8, "openmm-flowplugin simulate x      --steps 10"), (11, "ls  # list")]


def _run_text(text, tmp_path):
    page = tmp_path / "page.md"
    page.write_text(text)
    workdir = tmp_path / "work"
    workdir.mkdir()
    return run_page(page, [b for b in parse_page(text, "page.md") if b.kind], workdir, timeout=60)


def test_runner_shares_python_namespace_and_runs_bash_in_the_same_directory(tmp_path):
    text = ("```python\nimport os\nvalue = 41\nopen('made.txt', 'w').write(os.environ['MPLBACKEND'])\n```\n"
            "<!-- test: env GREETING=hi -->\n```bash\ntest \"$(cat made.txt)\" = Agg\necho $GREETING\n```\n"
            "```python\nassert value + 1 == 42\nassert 'GREETING' not in os.environ\n```\n")
    result = _run_text(text, tmp_path)
    assert result.returncode == 0, result.stdout
    assert "hi" in result.stdout.splitlines()


def test_runner_names_the_failing_python_line(tmp_path):
    result = _run_text("# t\n\n```python\nx = 1\n\nraise RuntimeError('boom')\n```\n\n```python\nprint('never')\n```\n",
                       tmp_path)
    assert result.returncode != 0
    assert "FAILED page.md:4 (python block)" in result.stdout
    assert 'page.md", line 6' in result.stdout and "RuntimeError: boom" in result.stdout
    assert "never" not in result.stdout


def test_runner_names_the_failing_bash_line(tmp_path):
    result = _run_text("```bash\ntrue\nfalse | cat\necho after\n```\n", tmp_path)
    assert result.returncode == 1
    assert "FAILED page.md:3 (bash block): false | cat" in result.stdout
    assert "after" not in result.stdout
    assert "FAILED page.md:3" in _failure_report(result)
