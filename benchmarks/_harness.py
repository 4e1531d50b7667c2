"""Process management for the benchmarks: emulator, proxy, one worker per contender run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


class ChildProcess:
    """A helper process that prints its URL on the first stdout line; stopped by its pid."""

    def __init__(self, argv: list[str], *, what: str, stdin: bool = False) -> None:
        self.what = what
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
            cwd=HERE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.kill()
            raise RuntimeError(f"{what} did not start: {line!r} {err[-2000:]}")
        self.url = line

    def stop(self) -> None:
        """Terminate (then kill) the process we started, by its pid."""
        if self.proc.poll() is None:
            try:
                if not self.proc.stdin:  # nothing to close: it only stops on a signal
                    raise subprocess.TimeoutExpired(self.proc.args, 0)
                self.proc.stdin.close()  # the emulator launcher exits when stdin closes
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Emulator(ChildProcess):
    """The asyncjsoc emulator in a separate process (so its CPU is not the client's)."""

    def __init__(self, knobs: dict[str, Any]) -> None:
        self.knobs = dict(knobs)
        argv = [PYTHON, str(HERE / "_emu_launcher.py"), json.dumps(knobs)]
        super().__init__(argv, what="emulator", stdin=True)

    def _command(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one command line to the launcher and read its JSON answer."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def set_knobs(self, **knobs: Any) -> None:
        """Change knobs of the running emulator."""
        self._command({"knobs": knobs})
        self.knobs.update(knobs)

    def summary(self) -> dict[str, Any]:
        """The audit as counters (see ``_emu_launcher.summary``)."""
        return self._command({"cmd": "summary"})

    def clear_audit(self) -> None:
        """Forget what the audit recorded so far."""
        self._command({"cmd": "clear"})

    def audit(self) -> dict[str, Any]:
        """The emulator's audit (``GET /_emulator/audit``)."""
        with urllib.request.urlopen(self.url + "/_emulator/audit", timeout=30) as resp:
            data: dict[str, Any] = json.load(resp)
            return data

    def cgi(self, name: str, **params: Any) -> dict[str, Any]:
        """One CGI call (GET) returning its JSON."""
        qs = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        with urllib.request.urlopen(f"{self.url}/cgi-bin/ajax/{name}?{qs}", timeout=120) as r:
            data: dict[str, Any] = json.loads(r.read().decode("latin-1"))
            return data


def proxy_for(target: str) -> ChildProcess:
    """A loopback forward proxy to ``target`` (see ``_proxy.py``)."""
    return ChildProcess([PYTHON, str(HERE / "_proxy.py"), target], what="proxy")


def stage_urls(emu: Emulator, chunks: list[str], email: str) -> list[tuple[str, str]]:
    """Export ``chunks`` with url_quick/as-is and return ``(url, relpath)`` for every file.

    This is the harness's own staging, done before the timed runs of download-only contenders.
    Staged exports (status 1/2) are polled until done.
    """
    pairs: list[tuple[str, str]] = []
    for ds in chunks:
        d = emu.cgi(
            "jsoc_fetch", op="exp_request", ds=ds, notify=email, method="url_quick",
            protocol="as-is", format="json",
        )
        deadline = time.monotonic() + 300
        while int(d.get("status", 4)) in (1, 2, 6, 12):
            if time.monotonic() > deadline:
                raise RuntimeError(f"staging {ds}: still pending after 300 s: {d}")
            time.sleep(0.2)
            d = emu.cgi("jsoc_fetch", op="exp_status", requestid=d["requestid"])
        if int(d["status"]) != 0:
            raise RuntimeError(f"staging {ds} failed: {d}")
        base = d.get("dir") or ""
        for row in d["data"]:
            name = row["filename"]
            if not name or name == "NoDataFile":
                continue
            path = name if name.startswith("/") else f"{base}/{name}"
            # One directory per record keeps names unique (as-is files share segment names).
            rel = path.lstrip("/").replace("/", "_") if name.startswith("/") else name
            pairs.append((emu.url + path, rel))
    return pairs


@dataclass
class Workdir:
    """Scratch space for outputs, removed after every run (or, inside :meth:`deferred`,
    after the last run of the block)."""

    root: Path
    counter: int = 0
    keep: bool = False
    made: list[Path] = field(default_factory=list)
    pending: list[Path] | None = None  # outputs whose removal waits for the end of a block

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Keep every output made inside the block until the block ends.

        Why: on ext4 without a journal (this machine's root file system) a new inode is
        not taken from those freed in the last ~30 s (the kernel's ``recently_deleted``
        check, one look per candidate), so after a run deletes 20,000 files, creating a
        file cost about 170-240 µs of kernel CPU instead of about 20 µs, for every
        contender that came next. Deleting each run's many small files right away made the
        small-files rates depend on what the run before had deleted.
        """
        self.pending = []
        try:
            yield
        finally:
            pending, self.pending = self.pending, None
            for path in pending:
                self.clean(path)

    def fresh(self, label: str) -> Path:
        """A new empty directory for one run."""
        self.counter += 1
        path = self.root / f"{self.counter:03d}-{label}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        self.made.append(path)
        return path

    def clean(self, path: Path) -> None:
        """Remove one run's output (at the end of a :meth:`deferred` block, if in one)."""
        if self.pending is not None:
            self.pending.append(path)
        elif not self.keep:
            shutil.rmtree(path, ignore_errors=True)


def run_worker(
    spec: dict[str, Any], *, timeout: float = 600.0, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one contender in a fresh ``_worker.py`` process and return its measurements."""
    out_dir = Path(spec["out"])
    spec_path = out_dir.parent / (out_dir.name + ".spec.json")
    res_path = out_dir.parent / (out_dir.name + ".result.json")
    spec.setdefault("timeout", timeout)  # external tools (curl, the CLI, ...) get this one
    spec_path.write_text(json.dumps(spec))
    child_env = dict(os.environ)
    child_env.update(env or {})
    t0 = time.perf_counter()
    # The worker runs in its own session so that a hung run is ended with everything it
    # started (the CLI, curl, ...): after ``timeout`` plus a grace period for the worker to
    # end its tool and report, the whole process group we created is killed.
    proc = subprocess.Popen(
        [PYTHON, str(HERE / "_worker.py"), str(spec_path), str(res_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE, env=child_env,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=timeout + 15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"contender": spec["contender"], "ok": False, "error": f"timeout after {timeout}s",
                "wall_s": time.perf_counter() - t0}
    finally:
        spec_path.unlink(missing_ok=True)
    if not res_path.exists():
        return {"contender": spec["contender"], "ok": False,
                "error": f"worker died rc={proc.returncode}: {stderr[-1500:]}",
                "wall_s": time.perf_counter() - t0}
    result: dict[str, Any] = json.loads(res_path.read_text())
    res_path.unlink()
    if stderr.strip() and not result.get("ok"):
        result["stderr"] = stderr[-1500:]
    return result
