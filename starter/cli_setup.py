"""`opsconductor setup`: prepare an existing Temporal namespace, and the connection flags.

`setup` checks that the namespace exists and registers our search attributes through the
operator service; a second run changes nothing and says so. It needs no database.
`--address`, `--namespace`, `--profile` and `--config-file` (on `setup` and `worker`) come
before every other source of connection settings (`opsconductor.starter.connect`).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path

from opsconductor.starter.connect import FLAGS, ConnectionFlags

EXIT_OK, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_UNREACHABLE = 0, 1, 3, 4


def add_connection_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("Temporal connection (before TEMPORAL_*, profiles and OPSC_*)")
    g.add_argument("--address", help="Temporal frontend host:port")
    g.add_argument("--namespace", help="Temporal namespace")
    g.add_argument("--profile", help="temporal.toml profile (else TEMPORAL_PROFILE, 'default')")
    g.add_argument("--config-file", type=Path,
                   help="temporal.toml to read (else TEMPORAL_CONFIG_FILE, the CLI's default)")


def apply_connection_flags(args: argparse.Namespace) -> None:
    """Make the command's flags the first source for every client it builds."""
    FLAGS.set(ConnectionFlags(address=getattr(args, "address", None),
                              namespace=getattr(args, "namespace", None),
                              profile=getattr(args, "profile", None),
                              config_file=getattr(args, "config_file", None)))


async def cmd_setup(args: argparse.Namespace) -> int:
    from opsconductor.schema.config import load_settings
    from opsconductor.starter.cli_output import _err, _out
    from opsconductor.starter.connect import TemporalConnectError, connect, plan_connection
    from opsconductor.starter.namespace_setup import NamespaceProblem, setup_namespace

    apply_connection_flags(args)
    settings = load_settings()
    try:
        target = plan_connection(settings).target
        client = await connect(settings)
        report = await setup_namespace(client, target.summary(), client.namespace)
    except TemporalConnectError as err:
        return _err(args, str(err), EXIT_UNREACHABLE)
    except NamespaceProblem as err:
        return _err(args, str(err), EXIT_NOT_FOUND if err.not_found else EXIT_FAILED)

    def text() -> str:
        head = f"Temporal {report.address}: namespace {report.namespace} exists"
        if not report.changed:
            return (f"{head}; all {len(report.already_registered)} search attributes were "
                    "already registered: nothing changed")
        kept = (f"; already there: {', '.join(report.already_registered)}"
                if report.already_registered else "")
        return f"{head}; registered search attributes {', '.join(report.registered)}{kept}"

    _out(args, report, text)
    return EXIT_OK


def register(add: Callable[[str, Callable[..., Awaitable[int]], str], argparse.ArgumentParser]
             ) -> None:
    """Add `setup` to the command line (`add` is cli.build_parser's helper)."""
    sp = add("setup", cmd_setup, "prepare an existing Temporal namespace: check it, register "
                                 "our search attributes (idempotent)")
    add_connection_flags(sp)
