"""README.md and docs/*.md name only flags and paths that exist.

Flags: every ``--flag`` in the text (prose, tables and code blocks alike) is attributed to the
command it belongs to, by context, and must appear in that command's ``--help``:

1. the nearest command named before it in the same unit (a code block's command line, backslash
   continuations joined; a prose sentence; a table row or heading).  Commands are named as run
   (``python -m sglang_fair.sim run``, ``benchmark/sim_compare.py --seeds``, ``sglang-router``) or
   as the docs call them (``the launcher``, ``the simulator``, ``the profiler``);
2. else the first command named after it in that unit;
3. else, on a comment line of a code block, the next command line of the block;
4. else the command named last before it in the document (the section's command).

A flag ending in ``*`` (``--fair-*``) must be the prefix of at least one flag.  There is no list of
flags to skip: a flag the docs name must exist.

Paths: a path from the repository root (first part one of its top-level entries, e.g.
``benchmark/results/sim_single.json``), a relative link, a relative path whose first folder is a
folder of the repository (``policy/presets/*.json``), and a bare source file name
(``test_http_router.py``) must exist; ``../shared/...`` must exist beside the checkout (the
simulator's ``shared_dir``, which honours ``SGLANG_FAIR_SHARED``).  Globs must match, ``{a,b}``
expands, and an all-capitals part (``NAME``) stands for any name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from sglang_fair.sim.workload import shared_dir

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PY = sys.executable
BENCHMARKS = sorted(p.stem for p in (REPO / "benchmark").glob("*.py"))

#: command -> the argv whose output lists its flags.  Shell scripts without a --help of their own
#: are covered by what they run (serve.sh: the launcher, test.sh: pytest); setup.sh's options are
#: its usage header (see ``_setup_sh_usage``), which is never executed here.
HELP_ARGV = {
    "launch_server": [PY, "-m", "sglang_fair.launch_server", "--help"],
    "sim": [PY, "-m", "sglang_fair.sim", "--help"],
    "sim capacity": [PY, "-m", "sglang_fair.sim", "capacity", "--help"],
    "sim run": [PY, "-m", "sglang_fair.sim", "run", "--help"],
    "profile": [PY, "-m", "sglang_fair.profile", "--help"],
    "tiny_llama": [PY, "-m", "sglang_fair.models.tiny_llama", "--help"],
    "bench_serving": [PY, "-m", "sglang.bench_serving", "--help"],
    "sglang-router": [PY, "-m", "sglang_router.launch_router", "--help"],
    "pytest": [PY, "-m", "pytest", "--help"],
    "kernels/fit_vidur_presets.py": [PY, str(REPO / "kernels" / "fit_vidur_presets.py"), "--help"],
    **{f"benchmark/{name}.py": [PY, str(REPO / "benchmark" / f"{name}.py"), "--help"] for name in BENCHMARKS},
}

FLAG = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9-]*\*?")

#: How each command is named in the text; earlier alternatives win where they overlap.
COMMAND_PATTERNS = [
    (r"sglang_fair\.launch_server|(?:scripts/)?serve\.sh|sglang\.launch_server|\blaunch_server\b|\bthe launcher\b",
     "launch_server"),
    (r"sglang_fair\.sim\s+capacity|\bsim\s+capacity\b", "sim capacity"),
    (r"sglang_fair\.sim\s+run|\bsim\s+run\b", "sim run"),
    (r"sglang_fair\.sim\b(?!/)|\bthe simulator\b", "sim"),
    (r"sglang_fair\.profile\b|\bkernels\.profile\b|\bthe profiler\b", "profile"),
    (r"sglang_fair\.models\.tiny_llama\b", "tiny_llama"),
    (r"\bbench_serving\b", "bench_serving"),
    (r"sglang_router\.launch_router|\bsglang-router\b", "sglang-router"),
    (r"(?:scripts/)?setup\.sh", "setup.sh"),
    (r"(?:scripts/)?test\.sh|\bpytest\b(?!\.ini)", "pytest"),
    (r"(?:kernels/)?fit_vidur_presets\.py", "kernels/fit_vidur_presets.py"),
    *[(rf"(?:benchmark/)?\b{name}\.py", f"benchmark/{name}.py") for name in BENCHMARKS],
]
COMMANDS = re.compile("|".join(f"(?P<c{i}>{p})" for i, (p, _) in enumerate(COMMAND_PATTERNS)), re.IGNORECASE)
#: Commands that are files (``benchmark/x.py``): in prose, naming the file is not running it, so it
#: sets the context only inside a backtick span that runs it (``python benchmark/x.py``) or gives
#: it a flag (``benchmark/x.py --seeds 0``).
SCRIPTS = {command for _, command in COMMAND_PATTERNS if command.endswith(".py")}


@dataclass
class Unit:
    text: str
    code: bool
    block: int  # index of the code block (-1 for prose)
    marks: list[tuple[int, int]]  # (offset in text, line number) where each source line starts

    @property
    def line(self) -> int:
        return self.marks[0][1]

    def line_at(self, offset: int) -> int:
        return [line for at, line in self.marks if at <= offset][-1]


def _join(pieces: list[tuple[int, str]]) -> tuple[str, list[tuple[int, int]]]:
    text, marks = "", []
    for number, piece in pieces:
        text += " " if text else ""
        marks.append((len(text), number))
        text += piece
    return text, marks


def _sentences(pieces: list[tuple[int, str]]) -> list[Unit]:
    """A prose paragraph cut into sentences (never inside a backtick span)."""
    text, marks = _join(pieces)
    cuts, inside = [0], False
    for i, char in enumerate(text):
        inside ^= char == "`"
        if not inside and char in ".!?" and re.match(r"\s+[A-Z]", text[i + 1:i + 3]):
            cuts.append(i + 2)
    cuts.append(len(text))
    out = []
    for begin, stop in zip(cuts, cuts[1:]):
        first = [line for at, line in marks if at <= begin][-1]
        local = [(0, first)] + [(at - begin, line) for at, line in marks if begin < at < stop]
        out.append(Unit(text[begin:stop], False, -1, local))
    return out


def units(text: str) -> list[Unit]:
    """Code lines (fenced or indented, ``\\`` continuations joined), table rows, headings and
    prose sentences."""
    out: list[Unit] = []
    fenced, block, previous_blank, in_indented = False, -1, True, False
    command: list[tuple[int, str]] = []
    paragraph: list[tuple[int, str]] = []

    def end_paragraph():
        if paragraph:
            out.extend(_sentences(paragraph))
            paragraph.clear()

    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            end_paragraph()
            fenced = not fenced
            block += fenced
            continue
        indented = not fenced and line.startswith("    ") and (previous_blank or in_indented)
        block += indented and not in_indented
        in_indented = indented or (in_indented and not stripped)
        previous_blank = not stripped
        if fenced or indented:
            end_paragraph()
            command.append((number, stripped.rstrip("\\ ") if stripped.endswith("\\") else stripped))
            if not stripped.endswith("\\"):
                joined, marks = _join(command)
                out.append(Unit(joined, True, block, marks))
                command.clear()
            continue
        if not stripped or stripped.startswith(("|", "#", "* ", "- ")) or re.match(r"\d+\. ", stripped):
            end_paragraph()
        if stripped:
            paragraph.append((number, stripped))
        if stripped.startswith(("|", "#")):
            end_paragraph()  # a table row or a heading is a unit of its own
    end_paragraph()
    if command:
        joined, marks = _join(command)
        out.append(Unit(joined, True, block, marks))
    return out


#: A server of benchmark/cpu_ab.py: ``--server "NAME[@PYTHONPATH]=FLAGS"`` (group 1: FLAGS).
SERVER_ARGUMENT = re.compile(r'--server\s+"[^"=]*=([^"]*)"')


def commands_in(text: str, code: bool = True) -> list[tuple[int, str]]:
    """(position, command) of each command ``text`` names (scripts in prose: only where run)."""
    spans = [m.span(1) for m in re.finditer(r"`([^`]*)`", text)]
    found = []
    for match in COMMANDS.finditer(text):
        command = COMMAND_PATTERNS[int(match.lastgroup[1:])][1]
        if command in SCRIPTS and not code:
            span = next(((s, e) for s, e in spans if s <= match.start() < e), None)
            if span is None or not ("python" in text[span[0]:match.start()]
                                    or FLAG.search(text, match.end(), span[1])):
                continue
        found.append((match.start(), command))
    return found


def attributed_flags(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, flag, command or None) for every flag named in ``path``."""
    result = []
    all_units = units(path.read_text())
    last_command = None
    for position, unit in enumerate(all_units):
        named = commands_in(unit.text, unit.code)
        # benchmark/cpu_ab.py --server "NAME=FLAGS": FLAGS are a launch_server command line.
        server_flags = [m.span(1) for m in SERVER_ARGUMENT.finditer(unit.text)] if unit.code else []
        for match in FLAG.finditer(unit.text):
            before = [c for at, c in named if at < match.start()]
            after = [c for at, c in named if at > match.start()]
            command = before[-1] if before else (after[0] if after else None)
            if any(start <= match.start() < end for start, end in server_flags):
                command = "launch_server"
            if command is None and unit.code and unit.text.startswith("#"):
                for later in all_units[position + 1:]:
                    if later.block != unit.block:
                        break
                    later_named = commands_in(later.text)
                    if later_named and not later.text.startswith("#"):
                        command = later_named[0][1]
                        break
            result.append((unit.line_at(match.start()), match.group(), command or last_command))
        if named:
            last_command = named[-1][1]
    return result


def _setup_sh_usage() -> str:
    """setup.sh's usage header (its leading comment): the script installs, so it is not run."""
    header = []
    for line in (REPO / "scripts" / "setup.sh").read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line)
    return "\n".join(header)


def _run_help(command: str) -> str:
    if command == "setup.sh":
        return _setup_sh_usage()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "python"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(HELP_ARGV[command], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, f"{' '.join(HELP_ARGV[command])} failed:\n{done.stderr[-2000:]}"
    return done.stdout


def _option_strings(help_text: str) -> set[str]:
    """The flags a --help defines: those of its usage lines (``[--flag``) and of its option column
    (a line starting with ``-`` up to two spaces), not flags its descriptions merely mention."""
    flags = set(re.findall(r"\[(--[A-Za-z][\w-]*)", help_text))
    for line in help_text.splitlines():
        stripped = line.strip().lstrip("#").strip()
        if stripped.startswith("-"):
            flags |= set(FLAG.findall(re.split(r"\s{2,}", stripped)[0]))
        elif stripped.startswith("scripts/"):  # setup.sh's usage header: "scripts/setup.sh --force  # ..."
            flags |= set(FLAG.findall(stripped.split("#")[0]))
    return flags


@pytest.fixture(scope="session")
def help_flags() -> dict[str, set[str]]:
    """Every command's flags from its --help, each run once (in parallel: the SGLang ones take seconds)."""
    wanted = {command for doc in DOCS for _, _, command in attributed_flags(doc) if command}
    if "sim" in wanted:  # `python -m sglang_fair.sim` without a verb: the flags of either verb
        wanted |= {"sim capacity", "sim run"}
    wanted = sorted(wanted)
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = dict(zip(wanted, pool.map(_run_help, wanted)))
    flags = {command: _option_strings(text) for command, text in texts.items()}
    if "sim" in flags:
        flags["sim"] |= flags["sim capacity"] | flags["sim run"]
    return flags


def _flag_known(flag: str, known: set[str]) -> bool:
    if flag.endswith("*"):
        return any(k.startswith(flag[:-1]) for k in known)
    return flag in known


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_named_in_the_docs_exists(doc, help_flags):
    problems = []
    for line, flag, command in attributed_flags(doc):
        if command is None:
            problems.append(f"{doc.name}:{line}: {flag}: no command named before it (name the command)")
        elif not _flag_known(flag, help_flags[command]):
            problems.append(f"{doc.name}:{line}: {flag} is not an option of {command}"
                            f" ({' '.join(Path(a).name if a == PY else a for a in HELP_ARGV.get(command, [command]))})")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------- paths
TOP_LEVEL = {p.name for p in REPO.iterdir() if p.name not in (".git", ".venv")} - {"__pycache__"}
REPO_FOLDERS = {p.name for p in REPO.rglob("*") if p.is_dir() and ".venv" not in p.parts and ".git" not in p.parts
                and "__pycache__" not in p.parts and not p.name.startswith(".")}
SOURCE_SUFFIXES = (".py", ".sh", ".txt", ".ini")  # bare names; .json/.md/.csv may be outputs
PATH_TOKEN = re.compile(r"[\w.~$/{},*<>-]+")


def _expand(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [x for part in match.group(1).split(",") for x in _expand(head + part + tail)]


def _exists(base: Path, pattern: str, *, anywhere: bool = False) -> bool:
    pattern = re.sub(r"(?<![A-Za-z])[A-Z][A-Z_]+(?![A-Za-z])", "*", pattern)  # NAME -> *
    for one in _expand(pattern):
        one = one.rstrip("/")
        if anywhere:
            if any(p for p in base.rglob(one) if ".venv" not in p.relative_to(base).parts):
                continue
            return False
        if not (any(base.glob(one)) if any(c in one for c in "*?[") else (base / one).exists()):
            return False
    return True


def named_paths(doc: Path) -> list[tuple[int, str, Path, bool]]:
    """(line, path as written, folder it is relative to, whether it may lie anywhere below it)."""
    found = []
    for unit in units(doc.read_text()):
        for target in re.findall(r"\]\(([^)\s]+)\)", unit.text):  # links, relative to the document
            if not re.match(r"[a-z]+:|#", target):
                found.append((unit.line, target.split("#")[0], doc.parent, False))
        spans = [unit.text] if unit.code else re.findall(r"`([^`]+)`", unit.text)
        for span in spans:
            for token in PATH_TOKEN.findall(span):
                token = token.rstrip(".,;:").removeprefix("./")
                if not token or "://" in token or "$" in token or token.startswith(("/", "~", "-")):
                    continue
                first = token.split("/")[0]
                if first == ".." and token.startswith("../shared"):
                    found.append((unit.line, token, shared_dir().parent, False))
                elif first in TOP_LEVEL and ("/" in token or (REPO / first).is_file()):
                    found.append((unit.line, token, REPO, False))
                elif "/" in token and first in REPO_FOLDERS:
                    found.append((unit.line, token, REPO, True))
                elif "/" not in token and token.endswith(SOURCE_SUFFIXES) and not unit.code:
                    found.append((unit.line, token, REPO, True))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_path_named_in_the_docs_exists(doc):
    missing = []
    for line, written, base, anywhere in named_paths(doc):
        if written.startswith("../shared"):
            ok = _exists(shared_dir(), written[len("../shared"):].lstrip("/") or ".")
        else:
            ok = _exists(base, written, anywhere=anywhere)
        if not ok:
            where = f" (../shared is {shared_dir()})" if written.startswith("../shared") else ""
            missing.append(f"{doc.name}:{line}: {written} does not exist{where}")
    assert not missing, "\n".join(missing)


def test_attribution_follows_the_command_line_and_the_sentence(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "Run `python -m sglang_fair.sim run --rate 2`; the launcher takes\n"
        "`--fair-ttft-slo` (see `sglang_fair.launch_server`).\n\n"
        "```bash\n"
        "# sglang-router in front (set --prometheus-port when taken):\n"
        "python -m sglang_router.launch_router --worker-urls \\\n"
        "  http://x --port 1\n"
        "```\n\n"
        "    .venv/bin/python benchmark/sim_compare.py --seeds 0\n\n"
        "| `--policies` | which |\n\n"
        "    .venv/bin/python benchmark/cpu_ab.py --rate 1 \\\n"
        "        --server \"a@/wt/python=--batch-policy sglang\" --seeds 0\n"
    )
    assert attributed_flags(doc) == [
        (1, "--rate", "sim run"), (2, "--fair-ttft-slo", "launch_server"),
        (5, "--prometheus-port", "sglang-router"), (6, "--worker-urls", "sglang-router"),
        (7, "--port", "sglang-router"), (10, "--seeds", "benchmark/sim_compare.py"),
        (12, "--policies", "benchmark/sim_compare.py"),
        # cpu_ab's --server "NAME=FLAGS": the FLAGS are a server's, the rest cpu_ab's.
        (14, "--rate", "benchmark/cpu_ab.py"), (15, "--server", "benchmark/cpu_ab.py"),
        (15, "--batch-policy", "launch_server"), (15, "--seeds", "benchmark/cpu_ab.py"),
    ]


def test_help_options_and_path_patterns(tmp_path):
    help_text = ("usage: x [-h] [--alpha A]\n\noptions:\n  -h, --help  show this\n"
                 "  --beta B, -b B  like --gamma, but not\n  --delta\n                 text --epsilon\n")
    assert _option_strings(help_text) == {"--alpha", "--help", "--beta", "--delta"}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "seed0.json").write_text("{}")
    (tmp_path / "a" / "seed1.json").write_text("{}")
    assert _exists(tmp_path, "a/seed{0,1}.json") and _exists(tmp_path, "a/NAME.json")
    assert not _exists(tmp_path, "a/seed{0,2}.json") and not _exists(tmp_path, "b/*.json")
    assert _exists(tmp_path, "seed1.json", anywhere=True) and not _exists(tmp_path, "x.py", anywhere=True)
