"""Open311 GeoReport v2 at /open311/v2/: the standard's shapes, a real client, the 12345 workflow behind it.

The app runs alone (no engine: nothing here talks to the assistant) on its own database.
Every JSON answer is validated against the GeoReport v2 schemas of open311/schema-validation
(`tests/data/open311`), every XML answer is parsed.
"""

from __future__ import annotations

import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from georeport import GeoReport
from jsonschema import Draft4Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from tests.support.console import create_staff
from tests.support.stack import TEST_SECRETS, Stack

SCHEMAS = Path(__file__).resolve().parent.parent / "data" / "open311"
PHONE = "13912345678"
EMAIL = "li.reporter@example.cn"
DESCRIPTION = "人民路18号门口的井盖缺失，夜里行人容易踩空，我的电话13912345678"
ADDRESS = "A1区人民路18号"
POST_ANSWER = "#/definitions/RequestResponse"  # only swagger.json has the schema of the POST answer
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00")


def schema(name: str) -> Draft4Validator:
    """A validator for one GeoReport v2 schema, its relative ``$ref`` s resolved from the same folder."""
    documents = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in SCHEMAS.glob("*.json")}
    registry: Registry[Any] = Registry().with_resources(
        (file, Resource.from_contents(contents, default_specification=DRAFT4)) for file, contents in documents.items()
    )
    # "#/definitions/…" names a definition of swagger.json; anything else a schema file.
    contents = {"$ref": f"swagger.json{name}"} if name.startswith("#") else documents[name]
    return Draft4Validator(contents, registry=registry, format_checker=FormatChecker())


def valid(name: str, body: Any) -> Any:
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in schema(name).iter_errors(body)]
    assert not errors, errors
    return body


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(workdir=tmp_path_factory.mktemp("open311"), app_env={"OPEN311_READS_PER_ADDRESS": "100000"})
    try:
        running.start_app()
        yield running
    finally:
        running.stop_app()


@pytest.fixture(scope="module")
def writer(app: Stack) -> str:
    return app.create_api_client("grid-handhelds", "write")


@pytest.fixture(scope="module")
def reader(app: Stack) -> str:
    return app.create_api_client("open-data-mirror", "read")


def url(app: Stack, path: str) -> str:
    return f"{app.app_url}/open311/v2/{path}"


def file(app: Stack, key: str, fmt: str = "json", **fields: str) -> requests.Response:
    form = {"api_key": key, "service_code": "construction-complaint", "description": DESCRIPTION}
    form.update(fields)
    return requests.post(url(app, f"requests.{fmt}"), data=form, timeout=60)


def database(app: Stack) -> sqlite3.Connection:
    assert app.database_url is not None
    return sqlite3.connect(app.database_url.removeprefix("sqlite:///"))


def case_count(app: Stack) -> int:
    with database(app) as connection:
        return int(connection.execute("SELECT count(*) FROM service_case").fetchone()[0])


@pytest.fixture(scope="module")
def filed(app: Stack, writer: str) -> str:
    """One request filed in JSON with an address, coordinates and the reporter's contact details."""
    response = file(
        app, writer, address_string=ADDRESS, lat="30.657", long="104.066", phone=PHONE, email=EMAIL, first_name="李"
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    [answer] = response.json()
    valid(POST_ANSWER, answer)
    assert set(answer) == {"service_request_id", "service_notice"}  # no contact detail echoed
    return str(answer["service_request_id"])


def test_every_json_answer_matches_the_georeport_v2_schemas(app: Stack, filed: str) -> None:
    services = valid("services.json", requests.get(url(app, "services.json"), timeout=30).json())
    assert len(services) == 1 + 7 + 7 * 6 and {"general", "construction", "construction-complaint"} <= {
        service["service_code"] for service in services
    }
    complaint = next(service for service in services if service["service_code"] == "construction-complaint")
    assert complaint == {
        "service_code": "construction-complaint",
        "service_name": "城乡建设·投诉",
        "description": "城乡建设类的投诉。",
        "metadata": False,
        "type": "realtime",
        "keywords": "12345,城乡建设,投诉",
        "group": "城乡建设",
    }
    definition = requests.get(url(app, "services/construction-complaint.json"), timeout=30).json()
    assert valid("service-definition.json", definition) == {"service_code": "construction-complaint", "attributes": []}
    listed = valid("requests.json", requests.get(url(app, "requests.json"), timeout=30).json())
    assert filed in [row["service_request_id"] for row in listed]
    [one] = valid("requests.json", requests.get(url(app, f"requests/{filed}.json"), timeout=30).json())
    valid("request.json", one)
    assert one["status"] == "open" and one["service_code"] == "construction-complaint"
    assert one["agency_responsible"] == "A1区住建局" and one["status_notes"] == "已转交负责部门"
    assert one["address"] == ADDRESS and (one["lat"], one["long"]) == (30.657, 104.066)
    for moment in ("requested_datetime", "updated_datetime", "expected_datetime"):
        assert TIME.fullmatch(one[moment]), one
    discovery = requests.get(url(app, "discovery.json"), timeout=30).json()
    [endpoint] = discovery["endpoints"]
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert endpoint["url"] == f"{app.app_url}/open311/v2" and set(endpoint["formats"]) == {
        "application/json",
        "text/xml",
    }
    assert TIME.fullmatch(discovery["changeset"]) and discovery["contact"]


def test_every_xml_answer_parses_and_chinese_round_trips(app: Stack, writer: str) -> None:
    response = file(app, writer, "xml", address_string="A1区解放路东段", service_code="transport")
    assert response.status_code == 200 and response.headers["Content-Type"] == "text/xml; charset=utf-8"
    root = ET.fromstring(response.content)
    assert root.tag == "service_requests"
    number = root.findtext("request/service_request_id")
    assert number and re.fullmatch(r"\d{8}-\d{4}", number)
    assert number in (root.findtext("request/service_notice") or "")
    services = ET.fromstring(requests.get(url(app, "services.xml"), timeout=30).content)
    assert "城乡建设·投诉" in [service.findtext("service_name") for service in services.iter("service")]
    assert services.findtext("service/metadata") == "false"
    definition = ET.fromstring(requests.get(url(app, "services/transport.xml"), timeout=30).content)
    assert definition.tag == "service_definition" and definition.find("attributes") is not None
    one = ET.fromstring(requests.get(url(app, f"requests/{number}.xml"), timeout=30).content)
    assert one.findtext("request/address") == "A1区解放路东段"
    assert one.findtext("request/agency_responsible") == "A1区交通运输局"
    assert TIME.fullmatch(one.findtext("request/requested_datetime") or "")
    listed = ET.fromstring(requests.get(url(app, "requests.xml?service_code=transport"), timeout=30).content)
    assert number in [request.findtext("service_request_id") for request in listed.iter("request")]
    discovery = ET.fromstring(requests.get(url(app, "discovery.xml"), timeout=30).content)
    assert discovery.findtext("endpoints/endpoint/specification") == "http://wiki.open311.org/GeoReport_v2"
    assert [f.text for f in discovery.iter("format")] == ["application/json", "text/xml"]
    errors = ET.fromstring(requests.get(url(app, "requests/20000101-0001.xml"), timeout=30).content)
    assert errors.tag == "errors" and errors.findtext("error/code") == "404"


def test_a_real_open311_client_reads_services_and_requests(app: Stack, filed: str) -> None:
    for fmt in ("json", "xml"):
        client = GeoReport(f"{app.app_url}/open311/v2", output_format=fmt)
        services = client.get_service_list()
        assert "城乡建设·投诉" in [service["service_name"] for service in services]
        assert client.get_service_definition("construction-complaint")["service_code"] == "construction-complaint"
        listed = client.get_service_requests(service_code="construction", status="open")
        listed = listed if isinstance(listed, list) else [listed]  # xmltodict gives one element unlisted
        assert filed in [request["service_request_id"] for request in listed]
        one = client.get_service_request(filed)
        one = one[0] if isinstance(one, list) else one
        assert one["service_request_id"] == filed and one["agency_responsible"] == "A1区住建局"


def test_nothing_personal_is_published_and_contact_details_are_stored_encrypted(app: Stack, filed: str) -> None:
    published = (
        requests.get(url(app, "requests.json"), timeout=30).text
        + requests.get(url(app, "requests.xml"), timeout=30).text
    )
    for personal in (PHONE, "5678", EMAIL, "李", "井盖"):
        assert personal not in published
    with database(app) as connection:
        case_row = connection.execute(
            "SELECT id, contact_phone, description FROM service_case WHERE case_number = ?", (filed,)
        ).fetchone()
        contact = connection.execute("SELECT contact FROM open311_request WHERE case_id = ?", (case_row[0],)).fetchone()
    stored = " ".join(str(value) for value in (*case_row[1:], *contact))
    assert PHONE not in stored and EMAIL not in stored and "井盖" not in stored


def test_a_filed_request_is_dispatched_seen_in_the_console_and_closes_with_the_case(
    app: Stack, filed: str, writer: str
) -> None:
    from tests.integration.test_console import signed_in

    supervisor = signed_in(app, create_staff(app, "supervisor", None, "值班王"))
    listed = supervisor.get("/cases").text
    assert filed in listed
    page = supervisor.get(f"/cases/{filed}")
    assert page.status_code == 200 and "A1区住建局" in page.text and "已派单" in page.text
    for action, note in (("accept", ""), ("start", ""), ("resolve", "井盖已补装")):
        moved = supervisor.post(f"/cases/{filed}/action", {"action": action, "note": note})
        assert moved.status_code == 200, moved.text[:300]
    [one] = valid("requests.json", requests.get(url(app, f"requests/{filed}.json"), timeout=30).json())
    assert one["status"] == "closed" and one["status_notes"] == "已办结" and "井盖已补装" not in json.dumps(one)
    closed = requests.get(url(app, "requests.json?status=closed"), timeout=30).json()
    assert filed in [row["service_request_id"] for row in closed]
    still_open = requests.get(url(app, "requests.json?status=open"), timeout=30).json()
    assert filed not in [row["service_request_id"] for row in still_open]
    with database(app) as connection:
        audited = connection.execute(
            "SELECT actor, action FROM audit_entry WHERE target = ? ORDER BY id", (filed,)
        ).fetchall()
    assert ("api:grid-handhelds", "case.file") in audited and ("api:grid-handhelds", "open311.file") in audited
    assert ("open311", "open311.view") in audited


def test_a_general_request_the_classifier_is_unsure_of_waits_in_the_manual_queue_like_a_chat_report(
    app: Stack, writer: str
) -> None:
    from tests.integration.test_console import department_option, signed_in

    # The classifier gives this text 0.24 for its best category: below the threshold, as in the chat.
    unsure = {"description": "这里的情况需要有关部门处理", "lat": "30.6", "long": "104.0"}
    response = file(app, writer, service_code="general", **unsure)
    assert response.status_code == 200, response.text
    [answer] = response.json()
    number = answer["service_request_id"]
    assert answer["service_notice"].startswith(f"已为您提交，工单号：{number}。工作人员会尽快分派")  # no token
    [one] = valid("requests.json", requests.get(url(app, f"requests/{number}.json"), timeout=30).json())
    assert one["status"] == "open" and one["status_notes"] == "已受理，正在安排负责部门"
    assert one["agency_responsible"] is None and one["expected_datetime"] is None
    assert one["lat"] == 30.6 and one["address"] is None  # coordinates given, no address to publish
    supervisor = signed_in(app, create_staff(app, "supervisor", None, "值班张"))
    queue = supervisor.get("/queue").text
    assert number in queue
    dispatched = supervisor.post(
        f"/cases/{number}/action", {"action": "dispatch", "department_id": department_option(queue, "A市生态环境局")}
    )
    assert dispatched.status_code == 200, dispatched.text[:300]
    [one] = valid("requests.json", requests.get(url(app, f"requests/{number}.json"), timeout=30).json())
    assert one["agency_responsible"] == "A市生态环境局" and one["status_notes"] == "已转交负责部门"
    assert one["service_code"] != "general"  # the classifier's category, as for a chat report


UNKNOWN_KEY = "c12345_0badc0de_" + "x" * 43
REFUSALS = [
    ("bad key", {"api_key": UNKNOWN_KEY}, 403),
    ("no key", {"api_key": ""}, 403),
    ("unknown service code", {"service_code": "potholes"}, 400),
    ("missing service code", {"service_code": ""}, 400),
    ("missing location", {}, 400),
    ("oversize description", {"description": "井" * 4001}, 400),
    ("empty description", {"description": "  "}, 400),
    ("lat not a number", {"lat": "abc", "long": "104.0"}, 400),
    ("lat out of range", {"lat": "200", "long": "104.0"}, 400),
    ("long out of range", {"lat": "30.6", "long": "-181"}, 400),
    ("lat without long", {"lat": "30.6"}, 400),
    ("not a mobile number", {"address_string": ADDRESS, "phone": "028-12345678"}, 400),
]


@pytest.mark.parametrize(("fields", "status"), [(f, s) for _, f, s in REFUSALS], ids=[r[0] for r in REFUSALS])
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_bad_filings_are_refused_as_the_standard_writes_it_and_nothing_is_filed(
    app: Stack, writer: str, fmt: str, fields: dict[str, str], status: int
) -> None:
    before = case_count(app)
    fields = dict(fields)
    response = file(app, fields.pop("api_key", writer), fmt, **fields)
    assert response.status_code == status, response.text
    if fmt == "json":
        [error] = response.json()
        assert error["code"] == status and error["description"]
    else:
        root = ET.fromstring(response.content)
        assert (
            root.tag == "errors" and root.findtext("error/code") == str(status) and root.findtext("error/description")
        )
    assert case_count(app) == before


def test_a_read_only_key_may_not_file(app: Stack, reader: str) -> None:
    before = case_count(app)
    response = file(app, reader, lat="abc")  # refused for its scope, before its input is looked at
    assert response.status_code == 403 and response.json()[0]["code"] == 403
    assert case_count(app) == before


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("requests/20000101-0001.json", 404),
        ("requests/not-a-number.json", 404),
        ("services/potholes.json", 404),
        ("requests.json?service_code=potholes", 400),
        ("requests.json?status=pending", 400),
        ("requests.json?start_date=yesterday", 400),
        ("requests.json?start_date=2026-01-01T00:00:00Z&end_date=2026-06-01T00:00:00Z", 400),
    ],
)
def test_bad_reads_are_refused_as_the_standard_writes_it(app: Stack, path: str, status: int) -> None:
    response = requests.get(url(app, path), timeout=30)
    assert response.status_code == status
    [error] = response.json()
    assert error["code"] == status and error["description"] and set(error) == {"code", "description"}


def test_reads_are_limited_per_address(tmp_path: Path) -> None:
    limited = Stack(workdir=tmp_path, app_env={"OPEN311_READS_PER_ADDRESS": "2"}, secrets=dict(TEST_SECRETS))
    try:
        limited.start_app()
        answers = [requests.get(url(limited, "services.json"), timeout=30) for _ in range(3)]
    finally:
        limited.stop_app()
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert answers[-1].json()[0]["code"] == 429
