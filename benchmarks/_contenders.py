"""The contenders: each is a function ``run(spec) -> dict`` executed inside a fresh worker process.

A spec is a plain dict (JSON-able) built by ``_scenarios``; keys used here:

``url``          emulator base URL (``http://127.0.0.1:PORT``)
``out``          output directory (empty on entry)
``urls_file``    JSON list of ``[url, relpath]`` (download-only contenders)
``chunks``       DRMS record-set strings, one export each (drms)
``query``        ``{"ds", "series", "start", "end", "segments"}`` (asyncjsoc, sunpy)
``emails``       notify addresses registered on the emulator
``connections``  download connections
``method``/``protocol``  export method and protocol
``options``      contender-specific extras

Imports are local to each contender so the worker's RSS and start-up reflect only what that
contender needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Spec = dict[str, Any]
Result = dict[str, Any]

READ_SIZE = 1 << 20


def _url_list(spec: Spec) -> list[tuple[str, str]]:
    """The staged ``(url, relpath)`` pairs for download-only contenders."""
    with open(spec["urls_file"]) as fh:
        return [(u, r) for u, r in json.load(fh)]


# ---------------------------------------------------------------- raw aiohttp reference


def run_raw_aiohttp(spec: Spec) -> Result:
    """Plain aiohttp: N workers, one connection each, 1 MiB reads, blocking writes."""
    import asyncio

    import aiohttp

    pairs = _url_list(spec)
    out = Path(spec["out"])
    conns = int(spec.get("connections", 2))
    fsync = bool(spec.get("options", {}).get("fsync", False))

    async def main() -> int:
        """Drain the URL list with ``conns`` workers sharing one session."""
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        for p in pairs:
            queue.put_nowait(p)
        made: set[Path] = set()
        connector = aiohttp.TCPConnector(limit=conns)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        total = 0
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def worker() -> None:
                """Fetch URLs until the queue is empty."""
                nonlocal total
                while True:
                    try:
                        url, rel = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    dest = out / rel
                    if dest.parent not in made:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        made.add(dest.parent)
                    async with session.get(url) as resp:
                        resp.raise_for_status()
                        with open(dest, "wb") as fh:
                            while True:
                                block = await resp.content.read(READ_SIZE)
                                if not block:
                                    break
                                fh.write(block)
                                total += len(block)
                            if fsync:
                                fh.flush()
                                os.fsync(fh.fileno())

            await asyncio.gather(*(worker() for _ in range(conns)))
        return total

    return {"bytes_moved": asyncio.run(main())}


# ---------------------------------------------------------------- disk-write control


def run_disk_write(spec: Spec) -> Result:
    """No network: write ``files`` files of ``size`` bytes from memory in 1 MiB writes
    (fsync each if asked). A control: the kernel's cost of putting those bytes in files on
    this machine, and how much it varies from run to run."""
    out = Path(spec["out"])
    n, size = int(spec["files"]), int(spec["size"])
    fsync = bool(spec.get("options", {}).get("fsync", False))
    block = b"\x01" * READ_SIZE
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        with open(out / f"f{i:05d}.fits", "wb") as fh:
            left = size
            while left > 0:
                left -= fh.write(block[:min(left, READ_SIZE)])
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        total += size
    return {"bytes_moved": total}


# ---------------------------------------------------------------- parfive


def _parfive(spec: Spec, *, tuned: bool, sunpy_mode: bool = False) -> Result:
    """parfive on the staged URL list, at its defaults or tuned (N conns, 1 split, 1 MiB)."""
    from parfive import Downloader

    pairs = _url_list(spec)
    out = Path(spec["out"])
    overwrite = bool(spec.get("options", {}).get("overwrite", True))
    if sunpy_mode:
        dl = Downloader(max_conn=1, max_splits=1, progress=False, overwrite=overwrite)
    elif tuned:
        conns = int(spec.get("connections", 2))
        dl = Downloader(max_conn=conns, max_splits=1, progress=False, overwrite=overwrite)
    else:
        dl = Downloader(progress=False, overwrite=overwrite)
    for url, rel in pairs:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"path": str(dest.parent), "filename": dest.name}
        if tuned:
            kwargs["chunksize"] = READ_SIZE
        dl.enqueue_file(url, **kwargs)
    res = dl.download()
    errors = [f"{e.url}: {e.exception!r}" for e in res.errors][:5]
    out_res: Result = {"failed_files": len(res.errors), "errors": errors}
    if res.errors:
        first = str(res.errors[0].exception).splitlines()[0][-120:]
        out_res["error"] = f"{len(res.errors)} files failed, e.g. {first}"
    return out_res


def run_parfive_default(spec: Spec) -> Result:
    """parfive ``Downloader()`` defaults (5 conns x 5 splits, 1 KiB reads), no progress bar."""
    return _parfive(spec, tuned=False)


def run_parfive_tuned(spec: Spec) -> Result:
    """parfive with ``max_conn=N, max_splits=1`` and per-file ``chunksize=1 MiB``."""
    return _parfive(spec, tuned=True)


def run_parfive_sunpy(spec: Spec) -> Result:
    """parfive as sunpy's JSOC client drives it: ``max_conn=1, max_splits=1``, default reads."""
    return _parfive(spec, tuned=False, sunpy_mode=True)


# ---------------------------------------------------------------- command-line tools


def _run_tool(argv: list[str], *, env: dict[str, str] | None = None, timeout: float) -> Result:
    """Run an external program; its CPU and RSS land in RUSAGE_CHILDREN."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    res: Result = {"returncode": proc.returncode}
    if proc.returncode != 0:
        res["error"] = (proc.stderr or proc.stdout)[-800:]
    return res


def run_curl(spec: Spec) -> Result:
    """``curl -Z`` (parallel transfers) over a config file of url/output pairs."""
    pairs = _url_list(spec)
    out = Path(spec["out"])
    cfg = out.parent / (out.name + ".curl.cfg")
    with open(cfg, "w") as fh:
        for url, rel in pairs:
            fh.write(f'url = "{url}"\noutput = "{out / rel}"\n')
    conns = int(spec.get("connections", 2))
    argv = ["curl", "-sS", "--fail", "--create-dirs", "-Z", "--parallel-max", str(conns), "-K"]
    res = _run_tool([*argv, str(cfg)], timeout=float(spec.get("timeout", 600)))
    cfg.unlink()
    return res


def run_aria2c(spec: Spec) -> Result:
    """``aria2c -i list -j N -x 1`` (one connection per file, N files at once)."""
    pairs = _url_list(spec)
    out = Path(spec["out"])
    lst = out.parent / (out.name + ".aria2.txt")
    with open(lst, "w") as fh:
        for url, rel in pairs:
            fh.write(f"{url}\n  out={rel}\n")
    conns = int(spec.get("connections", 2))
    argv = [
        "aria2c", "-q", "-i", str(lst), "-d", str(out), "-j", str(conns), "-x", "1", "-s", "1",
        "--allow-overwrite=true", "--auto-file-renaming=false", "--file-allocation=none",
        "--console-log-level=error", "--summary-interval=0",
    ]
    res = _run_tool(argv, timeout=float(spec.get("timeout", 600)))
    lst.unlink()
    return res


# ---------------------------------------------------------------- drms


def _drms_client(spec: Spec) -> Any:
    """A ``drms.Client`` pointed at the emulator through a ``ServerConfig``, as users would."""
    import drms

    base = spec["url"].rstrip("/")
    server = drms.ServerConfig(
        name="asyncjsoc-emulator",
        cgi_baseurl=f"{base}/cgi-bin/ajax/",
        cgi_show_series="show_series",
        cgi_jsoc_info="jsoc_info",
        cgi_jsoc_fetch="jsoc_fetch",
        cgi_check_address="checkAddress.sh",
        cgi_show_series_wrapper="showextseries",
        show_series_wrapper_dbhost="hmidb2",
        http_download_baseurl=f"{base}/",
    )
    return drms.Client(server=server, email=spec["emails"][0])


def run_drms(spec: Spec) -> Result:
    """drms as documented: export -> wait -> download, one chunk after another, defaults."""
    import logging

    logging.getLogger("drms").setLevel(logging.ERROR)
    client = _drms_client(spec)
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    method = spec.get("method", "url_quick")
    protocol = spec.get("protocol", "as-is")
    # drms polls a staged export every 5 s by default; the quick (smoke) runs pass a shorter
    # ``wait_sleep`` through drms's own ``wait(sleep=...)`` so they stay a few seconds long.
    wait_kwargs = {}
    if spec.get("options", {}).get("wait_sleep") is not None:
        wait_kwargs["sleep"] = float(spec["options"]["wait_sleep"])
    for ds in spec["chunks"]:
        req = client.export(ds, method=method, protocol=protocol)
        req.wait(**wait_kwargs)
        table = req.download(str(out))
        failed += int(table["download"].isna().sum())
    return {"failed_files": failed, "exports": len(spec["chunks"])}


# ---------------------------------------------------------------- sunpy


def run_sunpy(spec: Spec) -> Result:
    """sunpy ``Fido.search`` + ``Fido.fetch`` (JSOC client), reached through ``HTTP_PROXY``.

    sunpy's JSOCClient always builds ``drms.Client()`` for the registered "jsoc" server and has
    no ``server`` argument, so the harness runs a loopback forwarding proxy and sets
    ``HTTP_PROXY``/``http_proxy``: urllib (drms) and parfive both honour it. No code is patched.
    """
    import logging
    import warnings

    warnings.simplefilter("ignore")
    from astropy.time import Time
    from sunpy.net import Fido
    from sunpy.net import attrs as a

    logging.getLogger("sunpy").setLevel(logging.ERROR)
    queries = spec.get("options", {}).get("chunks") or [spec["query"]]
    # ``Fido.fetch`` sleeps ``sleep / 2`` (default 10 s) after requesting the export; the quick
    # (smoke) runs pass a shorter one through that documented keyword.
    fetch_kwargs: dict[str, Any] = {}
    if spec.get("options", {}).get("sleep") is not None:
        fetch_kwargs["sleep"] = float(spec["options"]["sleep"])
    t_search = 0.0
    failed = 0
    errors: list[str] = []
    for q in queries:  # one Fido search + fetch per chunk, one after another
        attrs = [
            # HMI times are TAI; sunpy converts whatever it gets to TAI, so say TAI.
            a.Time(Time(q["start"], scale="tai"), Time(q["end"], scale="tai")),
            a.jsoc.Series(q["series"]),
            a.jsoc.Notify(spec["emails"][0]),
        ]
        if q.get("segments"):
            attrs.extend(a.jsoc.Segment(s) for s in q["segments"])
        if spec.get("protocol"):
            attrs.append(a.jsoc.Protocol(spec["protocol"]))
        t0 = time.perf_counter()
        res = Fido.search(*attrs)
        t_search += time.perf_counter() - t0
        files = Fido.fetch(res, path=str(Path(spec["out"]) / "{file}"), progress=False,
                           **fetch_kwargs)
        failed += len(getattr(files, "errors", []))
        errors += [str(e)[:200] for e in getattr(files, "errors", [])][:3]
    return {"search_s": t_search, "failed_files": failed, "errors": errors[:5]}


# ---------------------------------------------------------------- asyncjsoc


def _asyncjsoc_api() -> tuple[Any, Any]:
    """``Client`` and ``ClientConfig``: the public names, or their modules until exported."""
    try:
        from asyncjsoc import Client, ClientConfig
    except ImportError:
        from asyncjsoc._client import Client
        from asyncjsoc._config import ClientConfig
    return Client, ClientConfig


def _asyncjsoc_config_kwargs(spec: Spec) -> dict[str, Any]:
    """ClientConfig keyword arguments for the spec, restricted to fields the config has."""
    import dataclasses

    ClientConfig = _asyncjsoc_api()[1]
    wanted: dict[str, Any] = {
        "server": spec["url"],
        "emails": tuple(spec["emails"]),
        "connections": int(spec.get("connections", 2)),
    }
    if spec.get("method"):
        wanted["method"] = spec["method"]
    if spec.get("protocol"):
        wanted["protocol"] = spec["protocol"]
    wanted.update(spec.get("options", {}).get("config", {}))
    names = {f.name for f in dataclasses.fields(ClientConfig)}
    unknown = set(wanted) - names
    if unknown:
        raise TypeError(f"ClientConfig has no field(s) {sorted(unknown)}")
    return {k: v for k, v in wanted.items() if v is not None}


def run_asyncjsoc(spec: Spec) -> Result:
    """asyncjsoc's library API: ``async with Client(config, out) as c: await c.fetch(ds)``."""
    import asyncio

    Client, ClientConfig = _asyncjsoc_api()
    cfg = ClientConfig(**_asyncjsoc_config_kwargs(spec))

    async def main() -> Any:
        """One fetch of the whole query."""
        async with Client(cfg, Path(spec["out"])) as client:
            return await client.fetch(spec["query"]["ds"])

    result = asyncio.run(main())
    summary = {"files": len(result.files), "failed": len(result.failed),
               "exports": len(result.exports), "skipped": result.skipped}
    res: Result = {"summary": summary, "failed_files": len(result.failed)}
    if result.failed:
        res["error"] = "; ".join(str(f)[:200] for f in result.failed[:3])
    return res


def run_asyncjsoc_plan(spec: Spec) -> Result:
    """Plan, export and record every file of the query in the state store, downloading none.

    This is the engine's own path (``Client.plan`` → ``ExportScheduler`` → ``StateStore``) with
    the downloaders replaced by a sink that settles each file at once, taking jobs the way the
    client's download workers do (``receive_soon``).
    """
    import anyio

    from asyncjsoc._emails import EmailPool
    from asyncjsoc._handoff import receive_soon
    from asyncjsoc._scheduler import DownloadJob, ExportScheduler
    from asyncjsoc._store import StateStore

    Client, ClientConfig = _asyncjsoc_api()
    cfg = ClientConfig(**_asyncjsoc_config_kwargs(spec))
    out = Path(spec["out"])
    timings: dict[str, float] = {}

    async def main() -> int:
        """Plan, then let the scheduler export every chunk into a sink."""
        t0 = time.perf_counter()
        async with Client(cfg, out) as client, StateStore(out / "plan.sqlite") as store:
            plan = await client.plan(spec["query"]["ds"])
            timings["plan_s"] = time.perf_counter() - t0
            await store.save_plan(plan, "bench")
            pool = EmailPool(client.api, cfg.emails, max_pending=cfg.max_pending_exports)
            await pool.check()
            scheduler = ExportScheduler(client.api, pool, store, cfg)
            send, receive = anyio.create_memory_object_stream[DownloadJob](cfg.download_buffer)
            seen = 0
            async with anyio.create_task_group() as tg, receive:
                tg.start_soon(scheduler.run, plan, send)
                while True:  # taking jobs as the client's download workers do
                    try:
                        job = await receive_soon(receive)
                    except anyio.EndOfStream:
                        break
                    seen += 1
                    job.settle(None)
            pool.close()
            summary = await store.summary()
            timings["recorded"] = summary.files_total
            timings["chunks"] = len(plan.chunks)
            return seen

    seen = asyncio_run(main)
    return {"files_recorded": seen, **timings}


def asyncio_run(fn: Callable[[], Any]) -> Any:
    """Run an async function on a new asyncio loop."""
    import asyncio

    return asyncio.run(fn())


def _summarise(result: Any) -> dict[str, Any]:
    """Pick the JSON-able counters out of a PullResult, whatever its exact shape."""
    out: dict[str, Any] = {}
    for name in dir(result):
        if name.startswith("_"):
            continue
        value = getattr(result, name, None)
        if isinstance(value, int | float | str | bool):
            out[name] = value
        elif isinstance(value, list | tuple):
            out[name + "_len"] = len(value)
    return out


def asyncjsoc_cli_argv(spec: Spec) -> list[str]:
    """The ``asyncjsoc fetch`` command line equivalent to the spec."""
    exe = shutil.which("asyncjsoc", path=os.path.dirname(sys.executable)) or "asyncjsoc"
    argv = [exe, "fetch", spec["query"]["ds"], "--server", spec["url"], "--out", spec["out"]]
    for email in spec["emails"]:
        argv += ["--email", email]
    argv += ["--connections", str(int(spec.get("connections", 2))), "--no-progress"]
    if spec.get("method"):
        argv += ["--method", spec["method"]]
    if spec.get("protocol"):
        argv += ["--protocol", spec["protocol"]]
    argv += list(spec.get("options", {}).get("cli_args", []))
    return argv


def run_asyncjsoc_cli(spec: Spec) -> Result:
    """The ``asyncjsoc fetch`` command as a subprocess (its CPU/RSS are the children's)."""
    env = dict(os.environ)
    env.setdefault("NO_COLOR", "1")
    return _run_tool(asyncjsoc_cli_argv(spec), env=env, timeout=float(spec.get("timeout", 600)))


CONTENDERS: dict[str, Callable[[Spec], Result]] = {
    "asyncjsoc": run_asyncjsoc,
    "asyncjsoc-cli": run_asyncjsoc_cli,
    "asyncjsoc-plan": run_asyncjsoc_plan,
    "drms": run_drms,
    "sunpy": run_sunpy,
    "parfive-default": run_parfive_default,
    "parfive-tuned": run_parfive_tuned,
    "parfive-sunpy": run_parfive_sunpy,
    "raw-aiohttp": run_raw_aiohttp,
    "disk-write": run_disk_write,
    "curl": run_curl,
    "aria2c": run_aria2c,
}

# anyio loads its asyncio backend on first use (about 9 ms): an import like the others.
_ASYNCJSOC = ("aiohttp", "anyio", "anyio._backends._asyncio", "asyncjsoc._client",
              "asyncjsoc._config", "asyncjsoc._scheduler", "asyncjsoc._verify",
              "astropy.io.fits")
PRELOAD: dict[str, tuple[str, ...]] = {
    "asyncjsoc": _ASYNCJSOC,
    "asyncjsoc-plan": _ASYNCJSOC,
    "drms": ("drms",),
    "sunpy": ("astropy.time", "drms", "parfive", "sunpy.net", "sunpy.net.attrs",
              "sunpy.net.jsoc"),
    "parfive-default": ("parfive",),
    "parfive-tuned": ("parfive",),
    "parfive-sunpy": ("parfive",),
    "raw-aiohttp": ("aiohttp",),
}
"""Modules each contender imports before its clock starts."""

# Contenders whose work happens in a child program: report the child's CPU and RSS only.
EXTERNAL = {"asyncjsoc-cli", "curl", "aria2c"}
