"""The review store's database connection: SQLite (WAL, synchronous=FULL, write transactions that take the
lock first with BEGIN IMMEDIATE) or PostgreSQL through SQLAlchemy Core, and database failures a user can
cause turned into one message naming the URL (password masked)."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

from prodcat.errors import DataError

BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for another's write lock before giving up


class StoreError(DataError):
    """The review store's database cannot be used (a bad URL, a read-only file, a server that is down)."""


class Conflict(DataError):
    """A request that contradicts the store's state: a product already decided or claimed by another
    reviewer, an idempotency key already used for something else, nothing to undo."""


def masked(url: str) -> str:
    """The URL with its password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def open_engine(url: str):
    """A SQLAlchemy engine for `url` (sqlite:///PATH or postgresql+psycopg://...); the SQLite file's folder
    is made. Raises StoreError for a URL SQLAlchemy cannot use."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise StoreError(f"review store {masked(url)}: unsupported database '{parsed.get_backend_name()}' "
                             "(use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB)")
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, url)
        engine = create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"review store {masked(url)}: not a usable database URL ({exc}); use sqlite:///PATH or "
                         "postgresql+psycopg://USER:PASSWORD@HOST/DB") from None
    return engine  # READ COMMITTED; writers lock the rows they change (FOR UPDATE [SKIP LOCKED])


def _sqlite_engine(parsed, url: str):
    from sqlalchemy import create_engine, event

    if not parsed.database or parsed.database == ":memory:":
        raise StoreError(f"review store {masked(url)}: give a file (sqlite:///PATH): an in-memory database is "
                         "lost when the process ends")
    uri = str(parsed.query.get("uri", "")).lower() == "true"  # sqlite:///file:PATH?mode=ro&uri=true
    path = Path(parsed.database.removeprefix("file:") if uri else parsed.database)
    try:
        if not uri:
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"review store {masked(url)}: cannot make the folder {path.parent} "
                         f"({exc.strerror or exc}); give another path with --set review.url=sqlite:///PATH") from None
    engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _begin_sqlite)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL (readers never wait for the writer), FULL sync (a committed decision survives a power loss),
    a busy timeout; pysqlite's own BEGIN handling off (ours is emitted in _begin_sqlite)."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (f"busy_timeout={BUSY_TIMEOUT_MS}", "journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _begin_sqlite(conn) -> None:
    """BEGIN IMMEDIATE for write transactions (the write lock taken first: two reviewers are served one
    after the other), a plain BEGIN for reads. A transaction that need not survive a power loss (a claim:
    lost, it is simply free again) commits without its own fsync (synchronous=NORMAL); the next durable
    commit fsyncs it too."""
    options = conn.get_execution_options()
    conn.exec_driver_sql(f"PRAGMA synchronous={'FULL' if options.get('prodcat_durable', True) else 'NORMAL'}")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("prodcat_write") else "BEGIN")


@contextmanager
def transaction(engine, url: str, write: bool, durable: bool = True):
    """A connection in a transaction, committed when the block ends (rolled back on an error); `durable`:
    the commit survives a power loss once it returns (else only a crash of the process: PostgreSQL's
    synchronous_commit off, SQLite's synchronous NORMAL). Database failures become a StoreError naming the
    URL."""
    from sqlalchemy.exc import DBAPIError, IntegrityError

    try:
        with engine.connect() as conn:
            conn.execution_options(prodcat_write=write, prodcat_durable=durable)
            with conn.begin():
                if not durable and engine.dialect.name == "postgresql":
                    conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                yield conn
    except IntegrityError:
        raise  # a unique key met: the caller decides (an idempotent request, a race to be retried)
    except DBAPIError as exc:
        raise StoreError(_explain(url, exc)) from None


def _explain(url: str, exc) -> str:
    """One line on a database failure and what to do about it."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    hint = "check the URL (--set review.url=...), that the database server runs and accepts this user"
    if "readonly" in text.replace(" ", "").lower() or "read-only" in text.lower():
        hint = "the database file or its folder is read-only: make it writable or give another path"
    elif "unable to open" in text.lower():
        hint = "the database file cannot be opened: check its path and permissions"
    elif "locked" in text.lower() or "busy" in text.lower():
        hint = f"another process held the database's write lock for over {BUSY_TIMEOUT_MS // 1000}s"
    return f"review store {masked(url)}: {text} ({hint})"
