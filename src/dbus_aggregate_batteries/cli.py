"""Command line: ``check-config``, ``run``, ``status``, ``demo``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbus_aggregate_batteries import __version__

if TYPE_CHECKING:
    from dbus_aggregate_batteries.config import Config, ConfigError

EXIT_CONFIG = 2


def _lean_process() -> None:
    """Keep modules the service never uses out of the long-running process.

    Imported only by the command, never by the package: the config module is imported lazily
    below so that this runs first. asyncio imports ``ssl`` and pydantic (through ``secrets``)
    ``_hashlib``, which map OpenSSL's libssl and libcrypto; the service talks to a local bus
    only. Both importers fall back cleanly when the import fails (asyncio without TLS,
    ``hashlib`` on Python's built-in hashes), and a ``None`` entry in ``sys.modules`` is the
    documented way to make it fail. Measured: 5.3 MB less peak RSS (README, "Imports").
    """
    for name in ("ssl", "_hashlib"):
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


def _print_config_error(exc: ConfigError) -> None:
    count = len(exc.problems)
    print(f"{exc.path}: configuration is invalid ({count} problem(s)):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {exc.path}: {problem}", file=sys.stderr)


def _load(path: str) -> Config | None:
    from dbus_aggregate_batteries.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        _print_config_error(exc)
        return None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )


def _cmd_check_config(args: argparse.Namespace) -> int:
    from dbus_aggregate_batteries.config import dump_config

    cfg = _load(args.file)
    if cfg is None:
        return EXIT_CONFIG
    sys.stdout.write(dump_config(cfg))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        # Under a supervisor an immediate exit would restart us every second until fixed.
        time.sleep(args.config_error_sleep)
        return EXIT_CONFIG
    _setup_logging(args.log_level or cfg.logging.level)
    from dbus_aggregate_batteries.shell.app import run_service

    return run_service(cfg, bus=args.bus, state_dir=args.state_dir)


def _cmd_status(args: argparse.Namespace) -> int:
    from dbus_aggregate_batteries.status import show_status

    return show_status(bus=args.bus, service=args.service)


def _cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level or "WARNING")
    from dbus_aggregate_batteries.demo import run_demo

    return run_demo(batteries=args.batteries, duration_s=args.duration, config=args.config)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests)."""
    parser = argparse.ArgumentParser(
        prog="dbus-aggregate-batteries",
        description="Merge dbus-serialbattery packs into one virtual Venus OS battery.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None,
        help="override the configured log level",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a config file and print the effective one")
    p.add_argument("file")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("run", help="run the service")
    p.add_argument("--config", required=True)
    p.add_argument(
        "--bus", default="system", help="system, session, or a D-Bus address (unix:path=...)"
    )
    p.add_argument("--state-dir", default=None, help="override service.state_dir")
    p.add_argument(
        "--config-error-sleep", type=float, default=0.0, metavar="S",
        help="wait S seconds before exiting on an invalid config (for supervisors)",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="print the virtual battery's paths and values")
    p.add_argument("--bus", default="system")
    p.add_argument("--service", default="com.victronenergy.battery.aggregate")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("demo", help="run the service on simulated packs on a private bus")
    p.add_argument("--batteries", type=int, default=3, choices=range(1, 17), metavar="N")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--config", default=None, help="config file (default: built-in demo config)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dbus-aggregate-batteries`` command."""
    args = build_parser().parse_args(argv)
    # Plugins found in site-packages would run inside our config validation and cost a scan
    # of every installed distribution at start; we use none.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    if args.func is _cmd_run:
        _lean_process()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
