"""``dbus-aggregate-batteries demo``: a private bus, simulated packs, the service, a live table.

Everything runs against its own dbus-daemon (never the machine's buses).  The table is read
back over D-Bus with GetItems, exactly as a Venus OS consumer would read it.

Ctrl-C (SIGINT), SIGTERM and SIGHUP (its terminal closed) all stop the demo the same way: the
service and the simulator stop, the private dbus-daemon is terminated and the temporary
folder removed. The daemon runs in its own session, so it never sees the terminal's signals;
only this process can stop it, so no signal may end this process without the clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from dbus_aggregate_batteries.config import Config, load_config, parse_config
from dbus_aggregate_batteries.shell import _dbus
from dbus_aggregate_batteries.shell.app import Application
from dbus_aggregate_batteries.sim.model import PackSpec, default_pack_specs, sine_profile
from dbus_aggregate_batteries.sim.privatebus import private_bus
from dbus_aggregate_batteries.sim.services import SimBank
from dbus_aggregate_batteries.status import limit_lines

log = logging.getLogger(__name__)

DEMO_CONFIG: dict[str, Any] = {
    "soc": {"source": "own"},
    "fault": {"startup_window_s": 5.0},
    "service": {"summary_interval_s": 60},
}
AGGREGATE = "com.victronenergy.battery.aggregate"
SPEED = 10.0  # simulated seconds per real second, so SoC visibly moves
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_INTERRUPTED = 130


class _Interrupted(Exception):
    """A stop signal arrived before the event loop's own handlers were installed."""


def demo_specs(batteries: int) -> list[PackSpec]:
    """N packs of mixed driver versions; the first one has a cell running high."""
    specs = default_pack_specs(batteries, layout="mixed", soc_pct=85.0)
    first = specs[0]
    specs[0] = PackSpec(
        name=first.name, cells=first.cells, capacity_ah=first.capacity_ah,
        soc_pct=first.soc_pct, layout=first.layout, device_instance=first.device_instance,
        high_cell_offset_v=0.06, high_cell=5, custom_name="Rack A",
    )
    return specs


def _num(value: Any, places: int, unit: str = "") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{places}f}{unit}"
    return "-"


def _row(name: str, v: dict[str, Any]) -> list[str]:
    return [
        name,
        _num(v.get("/Dc/0/Voltage"), 2),
        _num(v.get("/Dc/0/Current"), 1),
        _num(v.get("/Soc"), 1),
        _num(v.get("/System/MinCellVoltage"), 3),
        _num(v.get("/System/MaxCellVoltage"), 3),
        str(v.get("/System/MaxVoltageCellId") or "-"),
        _num(v.get("/Info/MaxChargeVoltage"), 2),
        _num(v.get("/Info/MaxChargeCurrent"), 0),
        _num(v.get("/Info/MaxDischargeCurrent"), 0),
        str(v.get("/Alarms/BmsCable", "-")),
    ]


HEADERS = ["pack", "V", "A", "SoC%", "min cell", "max cell", "max id", "CVL V", "CCL A",
           "DCL A", "alarm"]


async def _read(bus: _dbus.MessageBus, name: str) -> dict[str, Any]:
    try:
        reply = await _dbus.call(bus, name, "/", "GetItems", timeout_s=2.0)
    except (_dbus.DBusCallError, TimeoutError):
        return {}
    return {path: _dbus.unwrap(item["Value"]) for path, item in reply[0].items()}


def _render(rows: list[list[str]], footer: str) -> Any:
    try:
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in [HEADERS, *rows]) for i in range(len(HEADERS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                 for r in [HEADERS, *rows]]
        return "\n".join(lines) + "\n" + footer
    table = Table(title="dbus-aggregate-batteries demo (private bus)", caption=footer)
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("pack", "max id") else "right")
    for i, row in enumerate(rows):
        table.add_row(*row, style="bold green" if i == len(rows) - 1 else None,
                      end_section=i == len(rows) - 2)
    return table


async def _demo(batteries: int, duration_s: float | None, cfg: Config, workdir: Path) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    running = asyncio.Event()
    main = asyncio.current_task()

    def on_signal() -> None:
        # Always the normal way: a signal while starting lets the start-up finish (it is
        # bounded by the start-up window and call timeouts) and then stops at once, so every
        # connection is closed before the daemon goes. A second signal while starting cancels
        # the start-up; the daemon and the folder are still removed.
        if running.is_set() or not stop.is_set():
            stop.set()
        elif main is not None:
            main.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    with private_bus(workdir) as address:
        bank = SimBank(demo_specs(batteries), profile=sine_profile(60.0, 900.0))
        await bank.start(address)
        await bank.tick(1.0)
        app = Application(cfg, await _dbus.connect(address), state_dir=workdir / "state")
        await app.start()
        client = await _dbus.connect(address)
        running.set()
        sim_task = asyncio.ensure_future(bank.run(1.0, stop, speed=SPEED))
        app_task = asyncio.ensure_future(app.run())
        live: Any = None
        try:
            from rich.live import Live

            live = Live(auto_refresh=False)
            live.start()
        except ImportError:
            live = None
        started = loop.time()
        try:
            while not stop.is_set():
                rows = [
                    _row(name.rsplit(".", 1)[-1].replace("ttyUSB", "USB"),
                         await _read(client, name))
                    for name in bank.pack_names
                ]
                aggregate = await _read(client, AGGREGATE)
                rows.append(_row("aggregate", aggregate))
                footer = "\n".join([
                    *limit_lines(aggregate),
                    f"simulated time x{SPEED:g}; Ctrl-C stops; log {workdir / 'demo.log'}",
                ])
                view = _render(rows, footer)
                if live is not None:
                    live.update(view, refresh=True)
                else:
                    print(view, flush=True)
                if duration_s is not None and loop.time() - started >= duration_s:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            if live is not None:
                # After SIGHUP the terminal is gone and writing to it fails: clean up anyway.
                with contextlib.suppress(OSError):
                    live.stop()
            stop.set()
            app.stopping.set()
            code = await app_task
            await sim_task
            await app.shutdown()
            await _dbus.disconnect(app.bus)
            await _dbus.disconnect(client)
            await bank.stop()
        return code


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def run_demo(*, batteries: int, duration_s: float | None, config: str | None) -> int:
    """Entry point of ``dbus-aggregate-batteries demo``."""
    cfg = load_config(config) if config else parse_config(DEMO_CONFIG)
    # Until the event loop installs its handlers, SIGTERM and SIGHUP raise (as SIGINT does)
    # instead of killing the process, so every ``finally`` below still runs.
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS[1:]}
    try:
        return _run_demo(batteries, duration_s, cfg)
    except (_Interrupted, KeyboardInterrupt, asyncio.CancelledError):
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_demo(batteries: int, duration_s: float | None, cfg: Config) -> int:
    with tempfile.TemporaryDirectory(prefix="dab-demo-") as tmp:
        workdir = Path(tmp)
        handler = logging.FileHandler(workdir / "demo.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            return asyncio.run(_demo(batteries, duration_s, cfg, workdir))
        except RuntimeError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        finally:
            root.removeHandler(handler)
            handler.close()
