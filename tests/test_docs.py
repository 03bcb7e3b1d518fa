"""The docs tell the truth about their commands: every command they show parses with its arguments (the
command's own parser, run in-process up to its ``parse_args``), and every table of numbers names, in the
text just above it, the command that made it."""
from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *ROOT.glob("*/README.md")])
COMMAND = re.compile(r"^(?:torchrun\s+(?:--\S+\s+\S+\s+)*-m\s+([\w.]+)|python3?\s+(?:-m\s+([\w.]+)|(tools/\w+\.py)))(.*)$")
NOT_OURS = ("pytest", "pip", "venv", "pytorch_fid")


def _clean(line: str) -> str:
    """A shown command as a shell would take it: no comment, no redirection, optional [parts] kept."""
    line = line.split(" #", 1)[0].split(" > ", 1)[0].split(" && ")[-1] if " && python -m compare" in line \
        else line.split(" #", 1)[0].split(" > ", 1)[0]
    return re.sub(r"\[([^\]]*)\]", r"\1", line).replace("...", "").strip()


def shown_commands(text: str) -> list[str]:
    """Commands in ```bash blocks and in `python ...` spans of the prose."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        found += [_clean(line) for line in block.splitlines() if COMMAND.match(_clean(line))]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`((?:python3?|torchrun) [^`]+)`", prose):
        cmd = _clean(" ".join(span.split()))
        if COMMAND.match(cmd):
            found.append(cmd)
    return found


def all_commands() -> list[tuple[str, str]]:
    out = {}
    for doc in DOCS:
        for cmd in shown_commands(doc.read_text()):
            m = COMMAND.match(cmd)
            if (m.group(1) or m.group(2) or "").split(".")[0] not in NOT_OURS:
                out.setdefault(cmd, doc.relative_to(ROOT).as_posix())
    return sorted(out.items())


class Parsed(Exception):
    pass


@pytest.mark.parametrize("cmd, doc", all_commands(), ids=[c for c, _ in all_commands()])
def test_every_shown_command_parses(cmd, doc, monkeypatch, tmp_path):
    m = COMMAND.match(cmd)
    module, tool, args = m.group(1) or m.group(2), m.group(3), shlex.split(m.group(4))
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        real(self, argv, namespace)  # unknown flags and bad choices exit 2 here
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module or tool, *args])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Parsed):
        if module:
            for name in (module, f"{module}.__main__"):  # runpy warns about (and may reuse) an imported one
                monkeypatch.delitem(sys.modules, name, raising=False)
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            monkeypatch.syspath_prepend(str(ROOT / "tools"))
            runpy.run_path(str(ROOT / tool), run_name="__main__")


NUMBER = re.compile(r"^[−-]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?( ?± ?\S+)?( ?[x%]| ms| s)?$")


def number_tables(text: str):
    """(line number, the text of its section above it) for each table whose cells hold numbers (a table
    right below another shares the command named above the first)."""
    lines, start = text.splitlines(), None
    for i, line in enumerate(lines + [""]):
        is_row = line.lstrip().startswith("|")
        if is_row and start is None:
            start = i
        elif not is_row and start is not None:
            cells = [c.strip() for row in lines[start + 2:i] for c in row.strip().strip("|").split("|")]
            if any(NUMBER.match(c) for c in cells):
                above = lines[:start]
                heads = [j for j, t in enumerate(above) if t.startswith("#")]
                yield start + 1, "\n".join(above[heads[-1] + 1:] if heads else above)
            start = None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_number_table_names_its_command(doc):
    bad = [line for line, above in number_tables(doc.read_text())
           if not re.search(r"`(python3?|torchrun|bash) [^`]+`", above.replace("\n", " "))]
    assert not bad, f"{doc.name}: tables at lines {bad} name no command above them"


def test_the_checks_see_what_they_check():
    assert shown_commands("```bash\npython -m compare --out x   # the main job\n```\nRun `python tools/fid_bias.py`.") \
        == ["python -m compare --out x", "python tools/fid_bias.py"]
    table = "| a | b |\n|---|---|\n| x | 1.5 ± 0.2 |\n"
    assert [above for _, above in number_tables("Some words.\n\n" + table)] == ["Some words.\n"]
    assert list(number_tables("| a | b |\n|---|---|\n| x | y |\n")) == []  # no numbers: no command needed
