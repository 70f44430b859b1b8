"""Every shell and Python example of the README and of docs/ runs here, as written but for the
shortening its marker states, so that an example that drifts from the code fails CI.

An example is a fenced `sh` or `python` block. Each is preceded by a marker comment:

    <!-- example: NAME [slow] [sub "TEXT" "REPLACEMENT"]... [setup "COMMAND"] [file PATH]
         [wait PORT] [serve PORT] [after PAGE:NAME] -->
    <!-- example: tested-by TEST_FILE::TEST_NAME -->

Blocks of one page that share NAME form one scenario, run in order in a fresh directory that
holds links to the repository's `.venv`, `examples`, `configs`, `benchmarks` and `tests`, beside a link
`../shared` to the shared data. `sub` shortens training (it must match, so a changed example is
noticed); `setup` runs a shell command before the scenario (the data an example assumes);
`file PATH` writes a block as that file instead of running it (a module an example imports);
`wait PORT` waits for a server that the block started in the background; `serve PORT` runs a
block that never ends (TensorBoard) until its port answers, and leaves it running; `after
PAGE:NAME` runs the blocks at the end of another page's scenario, in its directory and with its
servers (a guide that goes on from the README's tour). Every process a scenario started is
stopped when it ends. `tested-by` names the test that runs a block itself,
with checks of its own (that test must read this page). Usage
synopses, with placeholders, are `text` blocks, not examples. A scenario marked `slow` runs in the
slow tier.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!-- example: ([\w-]+)(.*?)-->\s*$")
TESTED_BY = re.compile(r"<!-- example: tested-by ([\w/.]+)::(\w+) -->\s*$")
LINKED = (".venv", "examples", "configs", "benchmarks", "tests")


def blocks(page: Path) -> list:
    """[(language, code, marker line or None)] of the page's fenced blocks."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((match.group(1), match.group(2), before if MARKER.match(before) else None))
    return found


def scenarios() -> dict:
    """{"page:NAME": {"page", "slow", "subs", "setup", "steps": [(language, code, port, serve,
    file)]}}."""
    out = {}
    for page in PAGES:
        for language, code, marker in blocks(page):
            if language not in ("sh", "python") or marker is None:
                continue
            if TESTED_BY.match(marker):
                continue
            name, args = MARKER.match(marker).groups()
            words = shlex.split(args)
            key = f"{page.relative_to(ROOT)}:{name}"
            case = out.setdefault(key, {"page": page, "slow": False, "subs": [], "steps": [],
                                        "setup": []})
            wait, serve, file, i = None, False, None, 0
            while i < len(words):
                if words[i] == "after":
                    case["after"], i = words[i + 1], i + 2
                    continue
                if words[i] == "slow":
                    case["slow"], i = True, i + 1
                elif words[i] == "sub":
                    case["subs"].append((words[i + 1], words[i + 2]))
                    i += 3
                elif words[i] == "setup":
                    case["setup"].append(words[i + 1])
                    i += 2
                elif words[i] == "file":
                    file, i = words[i + 1], i + 2
                elif words[i] in ("wait", "serve"):
                    wait, serve, i = int(words[i + 1]), words[i] == "serve", i + 2
                else:
                    raise ValueError(f"{key}: unknown marker word {words[i]!r}")
            case["steps"].append((language, code, wait, serve, file))
    for key in [k for k, case in out.items() if "after" in case]:
        later = out.pop(key)
        out[later["after"]]["steps"] += later["steps"]
        out[later["after"]]["subs"] += later["subs"]
        out[later["after"]]["setup"] += later["setup"]
    return out


SCENARIOS = scenarios()


def test_every_example_is_marked():
    """No `sh` or `python` block goes untested: each carries an example marker."""
    unmarked = [f"{page.relative_to(ROOT)}: {code.splitlines()[0] if code else ''}"
                for page in PAGES for language, code, marker in blocks(page)
                if language in ("sh", "python") and marker is None]
    assert not unmarked, "examples without a marker (or make them text blocks):\n" + \
        "\n".join(unmarked)


def _wait_for(port: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on port {port} after {seconds} s")


def run(case: dict, work: Path) -> None:
    (work.parent / "shared").symlink_to(SHARED)
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(work),
           "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    groups = []
    try:
        for command in case["setup"]:
            subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=work, env=env,
                           check=True, capture_output=True, timeout=600)
        for number, (language, code, wait, serve, file) in enumerate(case["steps"]):
            for old, new in case["subs"]:
                code = code.replace(old, new)
            if file:
                (work / file).write_text(code)
                continue
            if language == "sh":
                command = ["bash", "-euo", "pipefail", "-c", code]
            else:
                script = work / f".example-{number}.py"
                script.write_text(code)
                command = [sys.executable, str(script)]
            # A file, not a pipe: a server the block leaves in the background keeps its output
            # open, and reading a pipe to its end would wait for that server.
            log = work / f".example-{number}.log"
            with open(log, "w") as output:
                process = subprocess.Popen(command, cwd=work, env=env, stdout=output,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            groups.append(process.pid)
            if not serve:
                process.wait(timeout=1500)
                assert process.returncode == 0, \
                    f"block {number} failed:\n{code}\n{log.read_text()[-4000:]}"
            if wait:
                _wait_for(wait)
    finally:
        for group in groups:   # a server the example started in the background
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass


def test_every_tested_by_names_a_test_that_reads_its_page():
    """A block run by a dedicated test: the test exists and reads the block's page."""
    for page in PAGES:
        for _, _, marker in blocks(page):
            match = marker and TESTED_BY.match(marker)
            if match:
                source = (ROOT / "tests" / match.group(1)).read_text()
                assert f"def {match.group(2)}(" in source, marker
                assert str(page.relative_to(ROOT)) in source or page.name in source, marker


def test_every_substitution_matches():
    """A `sub` whose text is not in its scenario no longer shortens anything: the example
    changed and its marker must follow."""
    stale = [f"{key}: {old!r}" for key, case in SCENARIOS.items() for old, _ in case["subs"]
             if not any(old in step[1] for step in case["steps"])]
    assert not stale, stale


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow if c["slow"] else
                                              pytest.mark.trains)
                                 for k, c in SCENARIOS.items()])
def test_example_runs(key, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    run(SCENARIOS[key], work)


def test_the_api_reference_renders_the_public_modules_and_each_declares_its_names():
    """`tfmeta.__all__` names the public modules; the reference has a page for each (and the
    serving clients), and every name a public module's `__all__` declares exists."""
    import importlib

    import tfmeta
    rendered = {name for page in (ROOT / "docs" / "reference").glob("*.md")
                for name in re.findall(r"^::: (\S+)", page.read_text(), re.M)}
    public = {f"tfmeta.{name}" for name in tfmeta.__all__} | {"tfmeta_serving.client"}
    assert rendered == public
    for name in public:
        module = importlib.import_module(name)
        assert module.__all__ and all(hasattr(module, n) for n in module.__all__), name
