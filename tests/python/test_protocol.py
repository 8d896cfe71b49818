"""The wire protocol: endpoint discovery, AWS JSON 1.0 errors and their status codes, SigV4
verification and the scopes of tokens."""

from __future__ import annotations

import datetime as dt

import pytest

import support
from support import assert_error, assert_raw_error, signed_request

DISCOVERY_METRIC = ("lodestone_timestream_requests_total", {"operation": "DescribeEndpoints"})


def describe_endpoints_count(rest) -> float:
    name, labels = DISCOVERY_METRIC
    return rest.metric(name, **labels)


def record_targets(client, log: list):
    """Appends (X-Amz-Target operation, URL) of every request `client` sends to `log`."""

    def before_send(request, **_):
        target = request.headers.get("X-Amz-Target", b"")
        target = target.decode() if isinstance(target, bytes) else target
        log.append((target.split(".")[-1], request.url))

    client.meta.events.register("before-send", before_send)


# --- Discovery -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["timestream-write", "timestream-query"])
def test_describe_endpoints_advertises_the_listener_with_its_scheme(stack, service):
    answer = support.client(stack, service).describe_endpoints()
    assert answer["Endpoints"] == [{"Address": stack.endpoint, "CachePeriodInMinutes": 1440}]


def test_explicit_endpoint_url_makes_no_describe_endpoints_call(stack, rest):
    before = describe_endpoints_count(rest)
    write = support.client(stack, "timestream-write")
    query = support.client(stack, "timestream-query")
    sent = []
    record_targets(write, sent)
    record_targets(query, sent)
    write.list_databases(MaxResults=1)
    assert query.query(QueryString="SELECT 1")["Rows"][0]["Data"][0]["ScalarValue"] == "1"
    assert [op for op, _ in sent] == ["ListDatabases", "Query"]
    assert describe_endpoints_count(rest) == before


def test_endpoint_from_environment_discovers_first_then_uses_the_address(stack, rest, monkeypatch):
    """With AWS_ENDPOINT_URL_TIMESTREAM_WRITE/_QUERY and no endpoint_url, botocore calls
    DescribeEndpoints once per client, then sends every call to the returned Address."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_TIMESTREAM_WRITE", stack.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_TIMESTREAM_QUERY", stack.endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_DISCOVERY_ENABLED", raising=False)
    before = describe_endpoints_count(rest)
    write = support.client(stack, "timestream-write", endpoint_url=None)
    query = support.client(stack, "timestream-query", endpoint_url=None)
    sent_write, sent_query = [], []
    record_targets(write, sent_write)
    record_targets(query, sent_query)

    write.list_databases(MaxResults=1)
    write.list_databases(MaxResults=1)
    assert query.query(QueryString="SELECT 1")["Rows"][0]["Data"][0]["ScalarValue"] == "1"

    assert [op for op, _ in sent_write] == ["DescribeEndpoints", "ListDatabases", "ListDatabases"]
    assert [op for op, _ in sent_query] == ["DescribeEndpoints", "Query"]
    for _, url in sent_write[1:] + sent_query[1:]:
        assert url.rstrip("/") == stack.endpoint
    assert describe_endpoints_count(rest) == before + 2


# --- Errors: code, status, body ---------------------------------------------------------------


def test_success_responses_are_aws_json_with_a_request_id(stack):
    response = signed_request(stack, "ListDatabases", {"MaxResults": 1})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(support.JSON_1_0)
    assert response.headers.get("x-amzn-RequestId")
    assert isinstance(response.json().get("Databases"), list)


def test_unknown_operation_is_404_unknown_operation_exception(stack):
    response = signed_request(stack, "NoSuchOp", {})
    assert_raw_error(response, "UnknownOperationException", 404)
    assert response.headers["Content-Type"].startswith(support.JSON_1_0)


def test_validation_exception_is_400(write_unvalidated, db):
    with pytest.raises(write_unvalidated.exceptions.ValidationException) as caught:
        write_unvalidated.create_table(
            DatabaseName=db,
            TableName="t",
            RetentionProperties={"MemoryStoreRetentionPeriodInHours": 8767, "MagneticStoreRetentionPeriodInDays": 1},
        )
    assert_error(caught, "ValidationException", 400)


def test_resource_not_found_is_404(write):
    with pytest.raises(write.exceptions.ResourceNotFoundException) as caught:
        write.describe_database(DatabaseName=support.unique("missing"))
    assert_error(caught, "ResourceNotFoundException", 404)


def test_conflict_is_409(write, db):
    with pytest.raises(write.exceptions.ConflictException) as caught:
        write.create_database(DatabaseName=db)
    assert_error(caught, "ConflictException", 409)


def test_rejected_records_is_419_with_the_records(write, table):
    future = support.now_ms() + 30 * 60 * 1000
    with pytest.raises(write.exceptions.RejectedRecordsException) as caught:
        write.write_records(
            DatabaseName=table.database,
            TableName=table.table,
            Records=[support.single({"sensor": "s1"}, "temperature", "1.5", future)],
        )
    assert support.rejected_indexes(caught) == [0]


def test_unmodelled_error_body_reaches_raw_clients_as_type_and_message(stack):
    response = signed_request(stack, "DescribeDatabase", {"DatabaseName": support.unique("missing")})
    assert_raw_error(response, "ResourceNotFoundException", 404)


# --- SigV4 -----------------------------------------------------------------------------------


def test_a_correctly_signed_raw_request_is_accepted(stack, db):
    response = signed_request(stack, "DescribeDatabase", {"DatabaseName": db})
    assert response.status_code == 200, response.text
    assert response.json()["Database"]["DatabaseName"] == db


def test_wrong_secret_is_403_invalid_signature(stack):
    bad = support.client(stack, "timestream-write", secret=stack.admin_secret + "x")
    with pytest.raises(bad.exceptions.ClientError) as caught:
        bad.list_databases()
    assert_error(caught, "InvalidSignatureException", 403)


def test_unknown_access_key_is_403_unrecognized_client(stack):
    stranger = support.client(stack, "timestream-query", key="lt_nosuchtoken", secret="whatever")
    with pytest.raises(stranger.exceptions.ClientError) as caught:
        stranger.query(QueryString="SELECT 1")
    assert_error(caught, "UnrecognizedClientException", 403)


def test_body_altered_after_signing_is_403_invalid_signature(stack):
    body = b'{"MaxResults": 1}'
    response = signed_request(stack, "ListDatabases", body, send_body=b'{"MaxResults": 2}')
    assert_raw_error(response, "InvalidSignatureException", 403)


@pytest.mark.parametrize(
    ("skew_minutes", "accepted"),
    [(-5, True), (-20, False)],
    ids=["5-minutes-old-is-accepted", "20-minutes-old-is-refused"],
)
def test_x_amz_date_must_be_within_15_minutes(stack, skew_minutes, accepted):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=skew_minutes)
    response = signed_request(stack, "ListDatabases", {"MaxResults": 1}, when=when)
    if accepted:
        assert response.status_code == 200, response.text
    else:
        assert_raw_error(response, "InvalidSignatureException", 403)


# --- Scopes ----------------------------------------------------------------------------------


def test_read_only_token_may_list_describe_and_query(reader_write, reader_query, db):
    assert reader_write.describe_database(DatabaseName=db)["Database"]["DatabaseName"] == db
    names = [d["DatabaseName"] for d in paged_databases(reader_write)]
    assert db in names
    assert reader_query.query(QueryString="SELECT 1")["Rows"][0]["Data"][0]["ScalarValue"] == "1"


def test_read_only_token_may_not_create_a_database(reader_write):
    with pytest.raises(reader_write.exceptions.AccessDeniedException) as caught:
        reader_write.create_database(DatabaseName=support.unique("denied"))
    assert_error(caught, "AccessDeniedException", 403)


def test_read_only_token_may_not_write_records(reader_write, query, table):
    record = support.single({"sensor": "s1"}, "temperature", "1.5", support.now_ms())
    with pytest.raises(reader_write.exceptions.AccessDeniedException) as caught:
        reader_write.write_records(DatabaseName=table.database, TableName=table.table, Records=[record])
    assert_error(caught, "AccessDeniedException", 403)
    _, found = support.run(query, f"SELECT count(*) FROM {table.sql}")
    assert found == [["0"]]


def paged_databases(write) -> list[dict]:
    found, token = [], None
    while True:
        answer = write.list_databases(MaxResults=20, **({"NextToken": token} if token else {}))
        found += answer["Databases"]
        token = answer.get("NextToken")
        if not token:
            return found
