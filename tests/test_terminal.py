"""``aethergraph run`` in a terminal: inline prompts, Ctrl-C and end of input, and the progress display.

Every test runs the real CLI (or a script) as a subprocess on a pseudo-terminal
(Python's ``pty`` module) against the session's nats-server, types what a user
would type, and reads what the terminal shows. The graphs are in
``tests/procs/terminal_graphs.py``.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import process_hosts
import pytest
from helpers import REPO_ROOT, subprocess_env, wait_until
from process_hosts import wait_ready

pytestmark = pytest.mark.slow

GRAPHS = Path(__file__).resolve().parent / "procs" / "terminal_graphs.py"
SAFETY_S = 60  # an upper bound for anything to happen, never a measurement
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def plain(data: bytes) -> str:
    """What the terminal shows, without its control sequences."""
    return _ANSI.sub(b"", data).decode(errors="replace").replace("\r", "")


class Terminal:
    """A process on a pseudo-terminal of 200 columns: what it writes is read back, what a user types is sent."""

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the pty is its controlling terminal and stdin/stdout/stderr
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
                os.chdir(cwd)
                os.execve(args[0], list(args), env)
            finally:
                os._exit(127)
        self.pid = pid
        self.fd = fd
        self.output = b""
        self.exit_code: int | None = None

    def _read(self, until: float) -> bool:
        """Read what arrives until the monotonic time ``until``; ``False`` once the process closed the terminal."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return True
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.1))
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                return False
            if not data:
                return False
            self.output += data

    def read_until(self, text: str) -> int:
        """Read until the screen shows ``text``; returns where in the output it ends."""
        deadline = time.monotonic() + SAFETY_S
        while text not in plain(self.output):
            if time.monotonic() > deadline or not self._read(min(deadline, time.monotonic() + 0.2)):
                if text in plain(self.output):
                    break
                raise AssertionError(f"the terminal never showed {text!r}; it showed:\n{plain(self.output)}")
        return len(self.output)

    def read_for(self, seconds: float) -> bytes:
        """Everything written in the next ``seconds`` (an observation window, not a limit)."""
        start = len(self.output)
        self._read(time.monotonic() + seconds)
        return self.output[start:]

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait(self) -> int:
        """Read to the end and return the exit status."""
        self._read(time.monotonic() + SAFETY_S)
        deadline = time.monotonic() + SAFETY_S
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.exit_code = os.waitstatus_to_exitcode(status)
                os.close(self.fd)
                return self.exit_code
            if time.monotonic() > deadline:
                raise AssertionError(f"the process did not exit; the terminal showed:\n{plain(self.output)}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.exit_code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(self.fd)
            self.exit_code = -9


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    try:
        yield opened
    finally:
        for terminal in opened:
            terminal.kill()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return subprocess_env(
        AETHERGRAPH_WORKSPACE=str(tmp_path / "ws"), TERM="xterm-256color", COLUMNS="200", LINES="40", **extra
    )


def run_on_terminal(terminals: list[Terminal], tmp_path: Path, *args: str, **env: str) -> Terminal:
    terminal = Terminal([sys.executable, "-m", "aethergraph", *args], _env(tmp_path, **env), tmp_path)
    terminals.append(terminal)
    return terminal


def status_of(tmp_path: Path, run_id: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "aethergraph", "status", run_id, "--json"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=SAFETY_S,
        check=True,
    )
    return dict(json.loads(done.stdout))


# --- inline prompts ------------------------------------------------------------------------------------------


def test_answers_typed_at_the_prompts_complete_the_run_and_the_display_stops_redrawing_meanwhile(
    terminals: list[Terminal], tmp_path: Path
) -> None:
    term = run_on_terminal(terminals, tmp_path, "run", f"{GRAPHS}:tt_ask", "--run-id", "tt-typed")
    asked = term.read_until("Your name? ")
    screen = plain(term.output[:asked])
    # What the run waits for is on the screen, not "running: -".
    assert "waiting for an answer to w4 (text: Your name?)" in screen
    assert "running: -" not in screen
    # The prompt is left alone: nothing is redrawn over the line where the answer is typed.
    assert term.read_for(1.0) == b""
    term.type(b"Ann\n")
    term.read_until("Ship it, Ann? [1] Approve / [2] Reject")
    assert term.read_for(1.0) == b""
    term.type(b"1\n")
    assert term.wait() == 0
    screen = plain(term.output)
    assert "run tt-typed succeeded" in screen
    assert '"Ann"' in screen
    assert status_of(tmp_path, "tt-typed")["status"] == "succeeded"


def _assert_left_waiting(tmp_path: Path, run_id: str, screen: str, why: str) -> None:
    assert f"no answer read ({why}): wait w4 of run {run_id} stays open" in screen
    assert f"aethergraph resume {run_id} --wait-id w4 --text" in screen
    state = status_of(tmp_path, run_id)
    assert state["status"] == "waiting", state
    assert [(w["wait_id"], w["prompt"]) for w in state["open_waits"]] == [("w4", "Your name?")]  # type: ignore[attr-defined]


def test_end_of_input_at_a_prompt_leaves_the_run_waiting_and_a_worker_finishes_it_when_answered(
    terminals: list[Terminal], tmp_path: Path
) -> None:
    term = run_on_terminal(terminals, tmp_path, "run", f"{GRAPHS}:tt_ask", "--run-id", "tt-eof")
    term.read_until("Your name? ")
    term.type(b"\x04")  # Ctrl-D: end of input
    assert term.wait() == 3  # left waiting
    _assert_left_waiting(tmp_path, "tt-eof", plain(term.output), "end of input")

    # The open wait is answerable later, from anywhere: a worker continues the run.
    hosts = process_hosts.Hosts(tmp_path / "hosts", GRAPHS, prefix="tt", safety_s=SAFETY_S)
    (tmp_path / "hosts").mkdir()
    try:
        worker = hosts.worker("w1")
        wait_ready(worker)
        answered = hosts.cli("resume", "resume", "tt-eof", "--text", "Bo")
        assert answered.returncode == 0, answered.stderr
        wait_until(
            lambda: (
                True if status_of(tmp_path, "tt-eof")["status"] == "waiting" and _open(tmp_path, "tt-eof") else None
            ),
            timeout_s=SAFETY_S,
            what="the run to ask its next question",
        )
        approved = hosts.cli("approve", "resume", "tt-eof", "--approve")
        assert approved.returncode == 0, approved.stderr
        wait_until(
            lambda: True if status_of(tmp_path, "tt-eof")["status"] == "succeeded" else None,
            timeout_s=SAFETY_S,
            what="the run to succeed",
        )
    finally:
        hosts.kill_all()


def _open(tmp_path: Path, run_id: str) -> bool:
    waits = status_of(tmp_path, run_id)["open_waits"]
    return any(w["prompt"] == "Ship it, Bo?" for w in waits)  # type: ignore[attr-defined,union-attr]


def test_ctrl_c_at_a_prompt_leaves_the_run_waiting_with_its_wait_open(
    terminals: list[Terminal], tmp_path: Path
) -> None:
    term = run_on_terminal(terminals, tmp_path, "run", f"{GRAPHS}:tt_ask", "--run-id", "tt-intr")
    term.read_until("Your name? ")
    term.type(b"\x03")  # Ctrl-C: the terminal sends SIGINT to the process
    code = term.wait()
    assert code in (3, 130), plain(term.output)
    _assert_left_waiting(tmp_path, "tt-intr", plain(term.output), "interrupted")


def test_end_of_input_at_an_approval_prompt_leaves_that_wait_open(terminals: list[Terminal], tmp_path: Path) -> None:
    term = run_on_terminal(terminals, tmp_path, "run", f"{GRAPHS}:tt_ask", "--run-id", "tt-eof-approval")
    term.read_until("Your name? ")
    term.type(b"Cy\n")
    term.read_until("Ship it, Cy? [1] Approve / [2] Reject")
    term.type(b"\x04")
    assert term.wait() == 3
    screen = plain(term.output)
    assert "no answer read (end of input): wait w6 of run tt-eof-approval stays open" in screen
    assert "aethergraph resume tt-eof-approval --wait-id w6 --approve (or --reject)" in screen
    state = status_of(tmp_path, "tt-eof-approval")
    assert state["status"] == "waiting"
    assert [w["wait_id"] for w in state["open_waits"]] == ["w6"]  # type: ignore[attr-defined]


SCRIPT = f"""
import sys
sys.path.insert(0, {str(GRAPHS.parent)!r})
import aethergraph
import terminal_graphs
aethergraph.run(terminal_graphs.tt_ask, {{}}, run_id="tt-script")
"""


def test_ctrl_c_at_a_prompt_of_a_script_leaves_the_run_waiting(terminals: list[Terminal], tmp_path: Path) -> None:
    term = Terminal([sys.executable, "-c", SCRIPT], _env(tmp_path), REPO_ROOT)
    terminals.append(term)
    term.read_until("Your name? ")
    term.type(b"\x03")
    term.wait()
    screen = plain(term.output)
    assert "no answer read (interrupted): wait w4 of run tt-script stays open" in screen
    state = status_of(tmp_path, "tt-script")
    assert state["status"] == "waiting", state


# --- progress ----------------------------------------------------------------------------------------------


def test_a_static_graph_shows_a_bar_with_nodes_done_rate_and_time_left(
    terminals: list[Terminal], tmp_path: Path
) -> None:
    term = run_on_terminal(terminals, tmp_path, "run", f"{GRAPHS}:tt_chain", "-i", "pause_s=0.6", "--run-id", "tt-bar")
    assert term.wait() == 0, plain(term.output)
    screen = plain(term.output)
    assert re.search(r"tt_chain run tt-bar: [1-3]/4 nodes \(\d+%\), \d+\.\d nodes/s, ~\d+s left", screen), screen
    assert "━" in screen  # the bar
    assert "run tt-bar succeeded" in screen


def test_a_graph_fn_shows_steps_committed_and_their_rate(terminals: list[Terminal], tmp_path: Path) -> None:
    term = run_on_terminal(
        terminals, tmp_path, "run", f"{GRAPHS}:tt_steps", "-i", "n=6", "-i", "pause_s=0.3", "--run-id", "tt-rate"
    )
    assert term.wait() == 0, plain(term.output)
    screen = plain(term.output)
    assert re.search(r"tt_steps run tt-rate: [1-6] steps? committed, \d+\.\d steps/s; running: tt_slow", screen)


def test_without_a_terminal_progress_is_a_plain_line_every_few_seconds(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aethergraph", "run", f"{GRAPHS}:tt_chain", "-i", "pause_s=0.5", "--run-id", "tt-plain"],
        env=_env(tmp_path, AETHERGRAPH_PROGRESS_INTERVAL_S="0.4"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=SAFETY_S,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.decode().splitlines()
    progress = [line for line in lines if line.startswith("tt_chain run tt-plain: ")]
    assert progress, lines
    assert all(re.fullmatch(r"tt_chain run tt-plain: [0-4]/4 nodes \(\d+%\).*", line) for line in progress)
    assert b"\x1b[" not in done.stderr  # no control sequences where nothing redraws
