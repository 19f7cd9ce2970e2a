"""``plugbay images``, ``bench``, ``demo`` and ``gateway``: the checkout's tools behind one command.

``bench`` and ``demo`` run files of the source checkout (bench/run.py,
examples/demo.py); an installed plugbay without them says so. ``gateway``
hands its arguments verbatim to plugbay.network.gateway.cli.main.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from plugbay.cli import output
from plugbay.errors import ConfigError, PlugbayError, printable

UNITS = {"start_to_first_call_ms": "ms", "p50_us": "us", "p99_us": "us", "calls": "count",
         "calls_per_s": "1/s"}


def checkout() -> Path:
    """The source checkout this plugbay runs from (src/plugbay/cli -> the repo root)."""
    return Path(__file__).resolve().parents[3]


def _checkout_file(relative: str, what: str) -> Path:
    path = checkout() / relative
    if not path.is_file():
        raise ConfigError(f"{what} needs {relative} from plugbay's source checkout, and this plugbay is"
                          f" installed without it ({path} is missing); run it from a git checkout"
                          " (pip install -e .)")
    return path


# --- images --------------------------------------------------------------------------------


@click.group(epilog="""\b
Example:
  plugbay images build kv counter""")
def images() -> None:
    """Build plugbay's base image and plugin images (never pulls)."""


@images.command("build", epilog="""\b
Examples:
  plugbay images build kv counter
  plugbay images build --plugin-dir ./myplugin --entry 'python /plugin/plugin.py' --tag myplugin:1""")
@click.argument("names", nargs=-1)
@click.option("--plugin-dir", type=click.Path(file_okay=False), help="Build your own plugin folder instead.")
@click.option("--entry", help="With --plugin-dir: the command the image runs (the folder is /plugin).")
@click.option("--tag", help="With --plugin-dir: the image tag.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the built tags.")
def build(names: tuple[str, ...], plugin_dir: str | None, entry: str | None, tag: str | None, quiet: bool) -> int:
    """Build the base image and plugin images: kv, kv-go, kv-go-gateway, counter, streaming,
    or --plugin-dir.

    Shows the steps and the elapsed time on a terminal, plain lines otherwise.
    """
    import shlex

    from plugbay import images as img

    if plugin_dir and (not entry or not tag):
        raise ConfigError("--plugin-dir needs --entry 'COMMAND' and --tag NAME:TAG too")
    for flag, value in (("--entry", entry), ("--tag", tag)):
        if value is not None and not plugin_dir:
            # the example images have their own entry and tag: building them instead would ignore it
            raise ConfigError(f"{flag} needs --plugin-dir FOLDER: it names your own plugin image (the example"
                              " images have fixed tags and entries)")
    if plugin_dir and names:
        raise ConfigError("give example names or --plugin-dir, not both")
    for name in names:
        if name not in img.EXAMPLES:
            raise ConfigError(f"unknown example image {name!r}; choose from {', '.join(sorted(img.EXAMPLES))}")
    jobs: list[tuple[str, Any]] = [(n, lambda p, c, n=n: img.ensure_example(n, progress=p, client=c))
                                   for n in (names or (() if plugin_dir else ("kv",)))]
    if plugin_dir:
        assert entry is not None and tag is not None
        jobs.append((tag, lambda p, c: (img.build_plugin_image(tag, Path(plugin_dir), shlex.split(entry),
                                                               progress=p, client=c), tag)[1]))
    client = img.docker_client()
    try:
        with _Progress(quiet) as progress:
            progress.step(f"base image {img.BASE_IMAGE}")
            img.ensure_base(progress.line, client=client)
            for label, job in jobs:
                progress.step(f"image {label}")
                built = job(progress.line, client)
                progress.done(str(built))
    finally:
        client.close()
    return output.OK


class _Progress:
    """Build steps with elapsed time: a rich live display on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.live = output.interactive() and not quiet
        self.started = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        self._steps = 0

    def __enter__(self) -> _Progress:
        if self.live:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                                 TextColumn("{task.fields[last]}", markup=False), TimeElapsedColumn(),
                                 console=output.console(stderr=True), transient=False)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def step(self, what: str) -> None:
        self._steps += 1
        if self._bar is not None:
            if self._task is not None:
                self._bar.update(self._task, last="done")
                self._bar.stop_task(self._task)
            self._task = self._bar.add_task(f"step {self._steps}: {what}", last="")
        elif not self.quiet:
            click.echo(f"step {self._steps}: {what} ({time.monotonic() - self.started:.1f}s)", err=True)

    def line(self, text: str) -> None:
        text = printable(text)  # a build's output: the Dockerfile's commands' words
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, last=text.strip()[-70:])
        elif not self.quiet:
            click.echo(f"  {text}", err=True)

    def done(self, tag: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, last="done")
            self._bar.stop_task(self._task)
            self._task = None
        click.echo(tag)


# --- bench ---------------------------------------------------------------------------------


def _bench_areas() -> list[str]:
    """The areas bench/run.py runs: one per bench/bench_<area>.py (none without the checkout)."""
    return sorted(p.stem.removeprefix("bench_") for p in (checkout() / "bench").glob("bench_*.py"))


@click.command(epilog="""\b
Examples:
  plugbay bench --only core --calls 200
  plugbay bench --json rows.jsonl --plot bench.png""")
@click.option("--only", multiple=True, help=f"Run one area ({', '.join(_bench_areas()) or 'bench/bench_<area>.py'})."
              " Repeatable.")
@click.option("--calls", type=click.IntRange(1, 1_000_000), default=500, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--faults", type=click.IntRange(1, 10_000), default=2, show_default=True,
              help="Fault injections per fault type (the faults area; its table follows the main one).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False),
              help="Write one JSON object per row (with a 'units' map) to this file.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Draw p50/p99 latency per row to this PNG "
              "(needs matplotlib: plugbay[bench]).")
def bench(only: tuple[str, ...], calls: int, rounds: int, faults: int, json_file: str | None,
          plot: str | None) -> int:
    """Run the benchmark (bench/run.py of the source checkout) and print its table."""
    script = _checkout_file("bench/run.py", "plugbay bench")
    areas = _bench_areas()
    unknown = [area for area in only if area not in areas]
    if unknown:
        raise ConfigError(f"--only {unknown[0]!r} is not a benchmark area; choose from {', '.join(areas)}")
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib; install plugbay[bench]") from None
    for option, path in (("--json", json_file), ("--plot", plot)):
        _check_writable(option, path)  # before minutes of benchmark, not after
    args = [sys.executable, str(script), "--json", "--calls", str(calls), "--rounds", str(rounds),
            "--faults", str(faults)]
    for area in only:
        args += ["--only", area]
    proc = subprocess.run(args, stdout=subprocess.PIPE, text=True, cwd=script.parent.parent)
    parsed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows = [{**r, "units": UNITS} for r in parsed if r.get("table") != "extra"]
    extra = [r for r in parsed if r.get("table") == "extra"]  # an area's own table (faults: one row per fault)
    if not rows:
        raise PlugbayError(f"bench/run.py produced no rows (exit code {proc.returncode}); its messages are"
                           " above; check --only names the areas of bench/bench_<area>.py")
    if json_file:
        Path(json_file).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in [*rows, *extra]))
    output.table(["area", "host -> plugin", "transport", "AutoMTLS", "start ms", "p50 us", "p99 us", "calls/s",
                  "plugbay / floor", "note"], [_cells(r) for r in rows])
    for area in dict.fromkeys(r["area"] for r in extra):
        mine = [r for r in extra if r["area"] == area]
        head = [k for k in dict.fromkeys(k for r in mine for k in r) if k not in ("area", "table")]
        output.table(head, [[_cell(r.get(k)) for k in head] for r in mine])
    if plot:
        _plot(rows, plot)
    return output.OK if proc.returncode == 0 else output.FAILED


def _check_writable(option: str, path: str | None) -> None:
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option} {path!r} cannot be written (its folder is missing or not writable);"
                          " name a file in a writable folder")


def _cells(r: dict[str, Any]) -> list[str]:
    head = [r["area"], f"{r['host']} -> {r['plugin']}", r["transport"], "yes" if r["automtls"] else "no"]
    if r.get("skipped"):
        return [*head, "-", "-", "-", "-", "-", str(r["skipped"])]
    return [*head, f"{r['start_to_first_call_ms']:.1f}", f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}",
            f"{r['calls_per_s']:.0f}", str(r.get("vs_floor") or ""), str(r.get("note") or "")]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list):
        return "; ".join(map(str, value))
    return "" if value is None else str(value)


def _plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if not r.get("skipped")]
    labels = [f"{r['area']}: {r['host']}->{r['plugin']}{' mTLS' if r['automtls'] else ''}" for r in done]
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.45 * max(len(done), 1)))
    ys = range(len(done))
    ax.barh([y - 0.2 for y in ys], [r["p50_us"] for r in done], height=0.4, label="p50")
    ax.barh([y + 0.2 for y in ys], [r["p99_us"] for r in done], height=0.4, label="p99")
    ax.set_yticks(list(ys), labels)
    ax.set_xlabel("unary call latency (us)")
    ax.set_title("plugbay bench")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    output.say(f"plot: {path}")


# --- demo, gateway ---------------------------------------------------------------------------


@click.command(epilog="Example:\n\n\b\n  plugbay demo")
def demo() -> int:
    """The README's demo: the KV example as a process, with AutoMTLS, in Go, in a container."""
    script = _checkout_file("examples/demo.py", "plugbay demo")
    return subprocess.run([sys.executable, str(script)], cwd=script.parent.parent).returncode


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []},
               epilog="Example:\n\n\b\n  plugbay gateway --help")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def gateway(args: tuple[str, ...]) -> int:
    """The network gateway (plugbay.network.gateway); every argument is passed on as is."""
    return run_gateway(list(args))


def run_gateway(argv: list[str], level: int = logging.INFO) -> int:
    """plugbay.network.gateway.cli.main(argv), imported only now (main() calls this before click
    parses anything, so ``--`` and every option reach the gateway verbatim), logging at ``level``."""
    try:
        from plugbay.network.gateway.cli import main as gateway_main  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        output.error("plugbay gateway is not available in this plugbay (plugbay.network.gateway is missing);"
                     " upgrade plugbay or install plugbay[network]")
        return output.USAGE
    return int(gateway_main(argv, level))
