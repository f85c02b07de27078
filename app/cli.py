"""`exchange` command line: serve, migrate, and operator actions over the API.

Rule owned here: the CLI never writes the journal itself (the running server's
sequencer is the only writer); operator actions go through the HTTP API with
the operator key, using the shared client library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import uuid
from typing import Any

from app import logs
from app.config import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None):
        overrides["port"] = args.port
    return Settings(**overrides)


async def _schema_ready(url: str) -> str | None:
    from app.store import Store

    store = await Store.open(url)
    try:
        await store.max_seq()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]
    finally:
        await store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.runtime import admin_credentials

    settings = _settings(args)
    problem = asyncio.run(_schema_ready(settings.database_url))
    if problem is not None:
        print(
            f"database is not ready ({problem}); run `exchange db upgrade` first", file=sys.stderr
        )
        return 2
    key, secret, generated = admin_credentials(settings)
    source = "generated, saved in" if generated else "from"
    where = (
        "EXCHANGE_ADMIN_KEY/SECRET"
        if settings.admin_key
        else f"{settings.data_dir}/admin-credentials.json"
    )
    print(
        f"operator credentials ({source} {where}):\n  api_key:    {key}\n  api_secret: {secret}",
        flush=True,
    )
    print(
        f"serving on http://{settings.host}:{settings.port} (database {settings.database_url})",
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=os.environ.get("EXCHANGE_LOG_LEVEL", "info").lower(),
        log_config=None,  # uvicorn's loggers go through ours (app/logs.py: text or JSON)
        ws="websockets-sansio",
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from app import demo

    return demo.run(_settings(args), args.seconds)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from app.db import upgrade

    settings = Settings()
    upgrade(settings.database_url)
    print(f"database at head: {settings.database_url}")
    return 0


def _admin_client(args: argparse.Namespace) -> Any:
    from app.runtime import admin_credentials
    from exchange_client import ExchangeClient

    settings = Settings()
    key, secret, _ = admin_credentials(settings)
    url = args.url or f"http://{settings.host}:{settings.port}"
    return ExchangeClient(url, api_key=key, api_secret=secret)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _call(fn: Any, *a: Any, **kw: Any) -> int:
    from exchange_client import ApiError

    try:
        _print(fn(*a, **kw))
        return 0
    except ApiError as err:
        print(f"error {err.status} {err.code}: {err.message}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"cannot reach the server: {err}", file=sys.stderr)
        return 1


def cmd_accounts_create(args: argparse.Namespace) -> int:
    with _admin_client(args) as client:
        return _call(client.create_account, args.name)


def cmd_deposit(args: argparse.Namespace) -> int:
    with _admin_client(args) as client:
        return _call(
            client.deposit,
            args.account,
            args.asset,
            args.amount,
            args.deposit_id or f"cli-{uuid.uuid4().hex}",
        )


def cmd_market_state(args: argparse.Namespace) -> int:
    with _admin_client(args) as client:
        return _call(client.set_market_state, args.market, args.state)


def cmd_oracle_sim(args: argparse.Namespace) -> int:
    """Post random-walk index prices to the server until stopped (or --count updates)."""
    from app import oracle_sim
    from exchange_client import ApiError, ExchangeClient

    settings = Settings()
    if settings.oracle_key and settings.oracle_secret:
        key, secret = settings.oracle_key, settings.oracle_secret
    else:
        from app.runtime import admin_credentials

        key, secret, _ = admin_credentials(settings)
    url = args.url or f"http://{settings.host}:{settings.port}"
    with ExchangeClient(url, api_key=key, api_secret=secret) as client:
        try:
            assets = client.assets()["assets"]
            quote = client.markets()["markets"][0]["quote"]
            start = oracle_sim.starting_prices(assets, quote)
            sent = oracle_sim.run(
                client.set_oracle_prices,
                start,
                args.interval,
                args.vol,
                args.seed,
                args.count,
                on_post=lambda wire: print(json.dumps(wire), flush=True),
            )
        except ApiError as err:
            print(f"error {err.status} {err.code}: {err.message}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
    print(f"posted {sent} updates", file=sys.stderr)
    return 0


def cmd_keys_create_admin(args: argparse.Namespace) -> int:
    """Write a fresh operator key pair to the data dir; the server uses it from its next start."""
    from pathlib import Path

    from app.runtime import new_admin_credentials

    path = Path(Settings().data_dir) / "admin-credentials.json"
    key, secret = new_admin_credentials(path)
    _print(
        {
            "api_key": key,
            "api_secret": secret,
            "permissions": ["admin"],
            "file": str(path),
            "note": "restart the server to use it (EXCHANGE_ADMIN_KEY/SECRET take precedence)",
        }
    )
    return 0


def cmd_engine_build(args: argparse.Namespace) -> int:
    from app import native

    fresh, _ = native.build_is_fresh()
    if fresh:
        print(f"native engine is up to date in {native.BUILD}")
        return 0
    code = native.build()
    # Without a compiler the pure engine is complete, so `make` goes on unless asked.
    return code if args.strict else 0


def cmd_engine_codegen(args: argparse.Namespace) -> int:
    from app import native

    text = native.generated_decoders()
    if native.DECODERS_FILE.read_text() == text:
        print(f"{native.DECODERS_FILE} is up to date")
    else:
        native.DECODERS_FILE.write_text(text)
        print(f"{native.DECODERS_FILE} regenerated")
    return 0


def cmd_engine_status(args: argparse.Namespace) -> int:
    from app import native

    print(json.dumps({"running": native.running(), "reason": native.reason}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="exchange", description="Spot exchange server and operator tools"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(fn=cmd_serve)

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("upgrade", help="migrate to the latest schema").set_defaults(fn=cmd_db_upgrade)

    acc = sub.add_parser("accounts", help="accounts").add_subparsers(
        dest="acc_command", required=True
    )
    ac = acc.add_parser("create", help="create an account (prints its API key and secret)")
    ac.add_argument("--name", required=True)
    ac.add_argument("--url", help="server URL (default http://EXCHANGE_HOST:EXCHANGE_PORT)")
    ac.set_defaults(fn=cmd_accounts_create)

    d = sub.add_parser("deposit", help="credit a deposit")
    d.add_argument("account")
    d.add_argument("asset")
    d.add_argument("amount")
    d.add_argument("--deposit-id", help="idempotency id (default: a new uuid)")
    d.add_argument("--url")
    d.set_defaults(fn=cmd_deposit)

    m = sub.add_parser("market-state", help="set a market's state")
    m.add_argument("market")
    m.add_argument("state", choices=["open", "reduce_only", "cancel_only", "halted"])
    m.add_argument("--url")
    m.set_defaults(fn=cmd_market_state)

    o = sub.add_parser("oracle-sim", help="post a simulated random-walk oracle feed")
    o.add_argument("--url")
    o.add_argument("--interval", type=float, default=1.0, help="seconds between updates")
    o.add_argument("--vol", type=float, default=0.0005, help="relative std-dev per update")
    o.add_argument("--seed", type=int, help="random seed (default: unseeded)")
    o.add_argument("--count", type=int, help="stop after this many updates")
    o.set_defaults(fn=cmd_oracle_sim)

    dm = sub.add_parser("demo", help="server + simulated oracle + a market maker on every market")
    dm.add_argument("--host")
    dm.add_argument("--port", type=int)
    dm.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    dm.set_defaults(fn=cmd_demo)

    k = sub.add_parser("keys", help="operator keys").add_subparsers(
        dest="keys_command", required=True
    )
    k.add_parser("create-admin", help="write a new operator key pair").set_defaults(
        fn=cmd_keys_create_admin
    )

    e = sub.add_parser("engine", help="the compiled engine build").add_subparsers(
        dest="engine_command", required=True
    )
    eb = e.add_parser("build", help="compile engine/ with mypyc into build/native")
    eb.add_argument("--strict", action="store_true", help="exit 1 if the build fails")
    eb.set_defaults(fn=cmd_engine_build)
    e.add_parser("codegen", help="regenerate engine/decoders.py").set_defaults(
        fn=cmd_engine_codegen
    )
    e.add_parser("status", help="which engine build this process runs").set_defaults(
        fn=cmd_engine_status
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logs.configure(
        os.environ.get("EXCHANGE_LOG_LEVEL", "INFO"),
        os.environ.get("EXCHANGE_LOG_FORMAT", "text").strip().lower() or "text",
    )
    for noisy in ("alembic", "httpx", "httpcore"):  # per-request logs are noise in a CLI
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
