"""Fixtures of the Timestream-compatible API suite.

The Rust harness starts the stack and runs `python -m pytest -q -x tests/python` with the
environment read by `support.Stack.from_env` (endpoint, CA, admin and read-only keys, bearer for
the REST API, the ingest workers' process ids). Clients are stock boto3 clients given `endpoint_url`
(so no endpoint discovery) unless a test says otherwise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
from botocore.exceptions import ClientError

import support
from support import Rest, Stack


@pytest.fixture(scope="session")
def stack() -> Stack:
    return Stack.from_env()


@pytest.fixture(scope="session")
def write(stack):
    return support.client(stack, "timestream-write")


@pytest.fixture(scope="session")
def query(stack):
    return support.client(stack, "timestream-query")


@pytest.fixture(scope="session")
def write_unvalidated(stack):
    """A write client that sends what botocore would refuse client-side (e.g. 0 h retention)."""
    return support.client(stack, "timestream-write", validate=False)


@pytest.fixture(scope="session")
def query_unvalidated(stack):
    return support.client(stack, "timestream-query", validate=False)


@pytest.fixture(scope="session")
def reader_write(stack):
    """The write API as the token of scope `*:read` only."""
    return support.client(stack, "timestream-write", key=stack.reader_key, secret=stack.reader_secret)


@pytest.fixture(scope="session")
def reader_query(stack):
    return support.client(stack, "timestream-query", key=stack.reader_key, secret=stack.reader_secret)


@pytest.fixture(scope="session")
def rest(stack) -> Rest:
    return Rest(stack)


def drop_database(write, name: str) -> None:
    """Deletes `name` and its tables; a database already gone is fine, any other failure is only
    a warning (cleanup must not hide the test's own outcome)."""
    try:
        tables, token = [], None
        while True:  # every page first: deleting while paging could shift the pages
            answer = write.list_tables(DatabaseName=name, MaxResults=20, **({"NextToken": token} if token else {}))
            tables += [t["TableName"] for t in answer.get("Tables", [])]
            token = answer.get("NextToken")
            if not token:
                break
        for table in tables:
            write.delete_table(DatabaseName=name, TableName=table)
        write.delete_database(DatabaseName=name)
    except write.exceptions.ResourceNotFoundException:
        pass
    except ClientError as error:
        warnings.warn(f"could not drop database {name}: {error}")


class Databases:
    """Creates uniquely named databases and drops them at teardown."""

    def __init__(self, write, prefix: str):
        self.write, self.prefix, self.created = write, prefix, []

    def __call__(self, **kwargs) -> str:
        name = support.unique(self.prefix)
        self.write.create_database(DatabaseName=name, **kwargs)
        self.created.append(name)
        return name

    def adopt(self, name: str) -> str:
        """A database created by other means (the CLI, awswrangler), dropped at teardown too."""
        self.created.append(name)
        return name

    def drop_all(self):
        for name in reversed(self.created):
            drop_database(self.write, name)


@pytest.fixture
def databases(write, request):
    made = Databases(write, request.node.name)
    yield made
    made.drop_all()


@pytest.fixture
def db(databases) -> str:
    """A fresh, empty database."""
    return databases()


@dataclass(frozen=True)
class Table:
    database: str
    table: str

    @property
    def sql(self) -> str:
        """The table as Timestream SQL names it: "db"."t"."""
        return support.qualified(self.database, self.table)


def create_table(write, database: str, **kwargs) -> Table:
    name = support.unique("t")
    write.create_table(DatabaseName=database, TableName=name, **kwargs)
    return Table(database, name)


@pytest.fixture
def table(write, db) -> Table:
    """A fresh table (Timestream's default retention: 6 h memory, 73000 d magnetic)."""
    return create_table(write, db)


@pytest.fixture(scope="module")
def module_databases(write, request):
    made = Databases(write, request.module.__name__)
    yield made
    made.drop_all()
