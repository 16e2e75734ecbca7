"""The operators' console and the worker's live page in a real headless Chromium (issue 9).

The tests follow an operator, in file order, through one browser session: the console is closed without the token,
the login, orders streaming in without a reload, tracking, a poison message in the DLQ panel shown as text, a
redrive, a delete behind a confirmation, the worker's own page, and the logout. Each test creates the data it
asserts on and logs in again when it needs to, so any one of them also runs alone (`-k`).

Synchronisation is always a WebDriverWait on the page's state with a deadline, never a sleep. The console samples
every 5 s and pushes each sample over SSE, so data is given DATA_DEADLINE seconds to appear.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from conftest import ROOT, Stack, http
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

# A sample every 5 s, plus the workers' long poll and DynamoDB writes on a 2-core machine.
DATA_DEADLINE = 45
UI_DEADLINE = 15
XSS = '<script>window.__pwned=1</script>"><img src=x onerror="window.__pwned=2">'
SCREENSHOTS = ROOT / "docs" / "screenshots"
PROCESS_DLQ = '.dlq[data-role="process"]'


# ------------------------------------------------------------------------------------------------- helpers
def wait(driver: Any, seconds: float, condition: Callable[[Any], Any], message: str) -> Any:
    """Polls `condition(driver)` until it is truthy; fails with `message` (a str or a callable building it)."""
    waiter = WebDriverWait(
        driver,
        seconds,
        poll_frequency=0.2,
        ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
    )
    try:
        return waiter.until(condition)
    except Exception as error:  # TimeoutException, with the page's state in the message
        detail = message() if callable(message) else message
        raise AssertionError(f"{detail} (after {seconds} s; url {driver.current_url})") from error


def text_of(driver: Any, selector: str) -> str | None:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", selector
    )


def post_order(stack: Stack, api: str | None = None) -> str:
    status, _, body = http(
        "POST", f"{api or stack.api}/api/pedidos", {"clienteId": str(uuid.uuid4()), "total": "59.98"}
    )
    assert status == 202, f"POST /api/pedidos answered {status}: {body!r}"
    return json.loads(body)["pedidoId"]


def latest_row(driver: Any, pedido_id: str) -> list[str] | None:
    """The cells' text of the order's row in the latest orders table, or None. Read in one script: the table is
    replaced on every sample, so element handles go stale."""
    return driver.execute_script(
        """
        const row = document.querySelector(`#latest tbody tr[data-pedido-id="${arguments[0]}"]`);
        return row ? Array.from(row.cells, (c) => c.textContent) : null;
        """,
        pedido_id,
    )


def dlq_rows(driver: Any, panel: str = PROCESS_DLQ) -> list[dict[str, Any]]:
    return driver.execute_script(
        """
        return Array.from(document.querySelectorAll(arguments[0] + " tbody tr"), (row) => ({
          id: row.dataset.messageId,
          reason: row.querySelector("td.reason")?.textContent,
          detail: row.querySelector("td.detail")?.textContent,
          body: row.querySelector("td.body")?.textContent,
          bodyHtml: row.querySelector("td.body")?.innerHTML,
        }));
        """,
        panel,
    )


def install_marker(driver: Any) -> dict[str, Any]:
    """Marks this document: a reload or a navigation loses the marker. Also records CSP violations from now on."""
    marker = uuid.uuid4().hex
    driver.execute_script(
        """
        window.__marker = arguments[0];
        window.__csp = [];
        document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(e.violatedDirective));
        // The POSTs the page makes, with their answers: the DLQ panel's status line is replaced by the list's
        // count as soon as the action is done, so the result is read here.
        if (!window.__posts) {
          window.__posts = [];
          const original = window.fetch;
          window.fetch = (url, options) => {
            const response = original(url, options);
            if (options && options.method === "POST") {
              const record = { url: String(url), body: options.body, status: null, result: null };
              window.__posts.push(record);
              response.then((r) => {
                record.status = r.status;
                r.clone().json().then((b) => { record.result = b; }, () => {});
              }, () => {});
            }
            return response;
          };
        }
        """,
        marker,
    )
    return {"marker": marker, **page_identity(driver)}


def posts(driver: Any, path: str) -> list[dict[str, Any]]:
    """The page's POSTs to `path` since install_marker, each with its status and JSON answer once they arrived."""
    return [p for p in driver.execute_script("return window.__posts || []") if p["url"] == path]


def page_identity(driver: Any) -> dict[str, Any]:
    return driver.execute_script(
        """
        return {
          marker: window.__marker,
          navigations: performance.getEntriesByType("navigation").length,
          timeOrigin: performance.timeOrigin,
        };
        """
    )


def assert_same_page(driver: Any, before: dict[str, Any]) -> None:
    after = page_identity(driver)
    assert after == before, f"the page was reloaded or navigated: before {before}, after {after}"
    assert after["navigations"] == 1


def screenshot(driver: Any, name: str) -> None:
    """Saves docs/screenshots/<name> when UPDATE_SCREENSHOTS=1 or when it does not exist yet."""
    path = SCREENSHOTS / name
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" or not path.exists():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(path)), f"could not save {path}"


def click_when_ready(driver: Any, selector: str) -> None:
    """Finds and clicks `selector`, again if the element was replaced in between (the tables re-render)."""

    def attempt(d: Any) -> bool:
        element = d.find_element(By.CSS_SELECTOR, selector)
        d.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()
        return True

    wait(driver, UI_DEADLINE, attempt, f"could not click {selector}")


def login(driver: Any, stack: Stack, token: str | None = None) -> None:
    driver.get(f"{stack.api}/console/login")
    field = wait(
        driver, UI_DEADLINE, ec.presence_of_element_located((By.ID, "token")), "no token field on the login page"
    )
    field.clear()
    field.send_keys(token or stack.admin_token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def page_text(driver: Any) -> str:
    """What the page says (a refused login shows the API's problem+json), for failure messages."""
    return (driver.execute_script("return document.body ? document.body.innerText : ''") or "")[:400]


def wait_live(driver: Any) -> None:
    wait(
        driver,
        UI_DEADLINE,
        lambda d: text_of(d, "#connection") == "live",
        lambda: f"the live badge says {text_of(driver, '#connection')!r}",
    )


@pytest.fixture
def console(driver: Any, stack: Stack) -> Any:
    """The browser on a live console, logging in when it has no session."""
    if driver.current_url != f"{stack.api}/console" or text_of(driver, "#connection") != "live":
        driver.get(f"{stack.api}/console")
        if not driver.current_url.startswith(f"{stack.api}/console") or driver.current_url.endswith("/login"):
            login(driver, stack)
            wait(
                driver,
                UI_DEADLINE,
                lambda d: d.current_url == f"{stack.api}/console",
                lambda: f"login did not open /console; the page says {page_text(driver)!r}",
            )
    wait_live(driver)
    return driver


def wait_order_row(driver: Any, pedido_id: str, shipped: bool, seconds: float = DATA_DEADLINE) -> list[str]:
    def ready(d: Any) -> list[str] | None:
        cells = latest_row(d, pedido_id)
        if cells is None or (shipped and cells[4] == "pending"):
            return None
        return cells

    return wait(
        driver,
        seconds,
        ready,
        lambda: (
            f"order {pedido_id} not in the latest orders{' with its shipment' if shipped else ''}: "
            f"{latest_row(driver, pedido_id)}"
        ),
    )


def open_dlq(driver: Any, panel: str = PROCESS_DLQ) -> None:
    """Opens the DLQ panel (its first listing): it reads the DLQ only when the operator asks (G36)."""
    driver.execute_script(
        """
        const panel = document.querySelector(arguments[0]);
        if (panel && panel.dataset.opened !== "true") panel.querySelector(".dlq-refresh").click();
        """,
        panel,
    )


def wait_dlq_quiet(driver: Any) -> None:
    """Waits until two consecutive samples show the same process DLQ depth and the panel lists that many messages.

    Once opened, the panel lists the DLQ again whenever the number of messages in it changes, and a listing hides the
    messages for a moment (it scans them). A redrive or delete whose own scan runs meanwhile misses them and answers
    `notFound`, and the panel then overwrites that answer with its count, so the operator sees nothing happen. Right
    after a sample with an unchanged depth, the next listing is a whole sample period away."""
    snapshot = """
        return [document.querySelector("#updated").textContent,
                document.querySelector('.queue[data-role="process"] .d-visible')?.textContent,
                document.querySelectorAll(arguments[0] + " tbody tr").length];
    """
    seen: dict[str, Any] = {"updated": None, "visible": None}

    def quiet(d: Any) -> bool:
        open_dlq(d)
        updated, visible, rows = d.execute_script(snapshot, PROCESS_DLQ)
        if updated == seen["updated"]:
            return False
        settled = seen["updated"] is not None and visible == seen["visible"] and visible == str(rows)
        seen.update(updated=updated, visible=visible)
        return settled

    wait(
        driver,
        DATA_DEADLINE,
        quiet,
        lambda: f"the DLQ panel never settled: {driver.execute_script(snapshot, PROCESS_DLQ)}",
    )


def wait_dlq_row(driver: Any, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    def found(d: Any) -> dict[str, Any] | None:
        open_dlq(d)
        return next((row for row in dlq_rows(d) if predicate(row)), None)

    return wait(driver, DATA_DEADLINE, found, lambda: f"{what} not in the process DLQ panel: {dlq_rows(driver)}")


# -------------------------------------------------------------------------------------------- closed without the token
def test_the_admin_surface_does_not_exist_without_admin_token(stack: Stack) -> None:
    for method, path in (
        ("GET", "/console"),
        ("GET", "/console/login"),
        ("POST", "/console/login"),
        ("GET", "/console/events"),
        ("GET", "/console/api/session"),
    ):
        body = b"token=x" if method == "POST" else None
        headers = (
            {"Content-Type": "application/x-www-form-urlencoded", "Accept": "text/html"}
            if body
            else {"Accept": "text/html"}
        )
        status, _, _ = http(method, f"{stack.api_without_admin}{path}", body, headers)
        assert status == 404, f"{method} {path} without ADMIN_TOKEN answered {status}, not 404"
    # The same API with the token has them: the 404s above are the switch, not a missing route.
    status, _, _ = http("GET", f"{stack.api}/console/login")
    assert status == 200


def test_without_login_the_browser_gets_the_login_page_and_no_data(driver: Any, stack: Stack) -> None:
    driver.delete_all_cookies()
    driver.get(f"{stack.api}/console")
    wait(
        driver,
        UI_DEADLINE,
        lambda d: d.current_url == f"{stack.api}/console/login",
        "an anonymous browser was not sent to the login page",
    )
    assert driver.find_elements(By.ID, "token"), "the login page has no token field"
    for console_part in ("#latest", "#dlqs", "#queues", "#chart-throughput"):
        assert not driver.find_elements(By.CSS_SELECTOR, console_part), f"the login page shows {console_part}"
    # The data routes refuse an anonymous client outright.
    for path in ("/console/events", "/console/api/session", "/console/api/dlq/process"):
        status, headers, _ = http("GET", f"{stack.api}{path}")
        assert status == 401, f"GET {path} without a session answered {status}"
        assert headers.get("www-authenticate", "").startswith("Bearer"), headers


def test_a_wrong_token_is_refused(driver: Any, stack: Stack) -> None:
    driver.delete_all_cookies()
    wrong = "x" * len(stack.admin_token)
    login(driver, stack, token=wrong)
    wait(
        driver,
        UI_DEADLINE,
        lambda d: "error" in d.current_url,
        lambda: f"a wrong token did not come back to the form; the page says {page_text(driver)!r}",
    )
    alert = driver.find_element(By.CSS_SELECTOR, "[role=alert]")
    assert "not valid" in alert.text
    assert wrong not in driver.page_source, "the page echoes the presented token"
    assert not [c for c in driver.get_cookies() if c["name"] == "pedidos_admin"], "a wrong token got a session"
    driver.get(f"{stack.api}/console")
    wait(
        driver, UI_DEADLINE, lambda d: d.current_url == f"{stack.api}/console/login", "no session, yet /console opened"
    )


# ------------------------------------------------------------------------------------------------- the live console
def test_login_opens_the_live_console(driver: Any, stack: Stack) -> None:
    driver.delete_all_cookies()
    login(driver, stack)
    wait(
        driver,
        UI_DEADLINE,
        lambda d: d.current_url == f"{stack.api}/console",
        lambda: f"the right token did not open /console; the page says {page_text(driver)!r}",
    )
    wait_live(driver)
    cookie = next((c for c in driver.get_cookies() if c["name"] == "pedidos_admin"), None)
    assert cookie is not None, "no session cookie after login"
    assert cookie["httpOnly"] and cookie["secure"] and cookie.get("sameSite") == "Strict", cookie
    assert driver.execute_script("return document.cookie").find("pedidos_admin") == -1, "the session is readable by JS"


def test_orders_stream_in_without_a_reload(console: Any, stack: Stack) -> None:
    page = install_marker(console)
    before = text_of(console, "#total-accepted")
    accepted_before = int(before) if before and before.isdigit() else 0

    pedidos = [post_order(stack) for _ in range(3)]

    wait(
        console,
        DATA_DEADLINE,
        lambda d: (t := text_of(d, "#total-accepted")) is not None and t.isdigit() and int(t) >= accepted_before + 3,
        lambda: f"accepted counter still {text_of(console, '#total-accepted')!r} (was {before!r})",
    )

    def accepted_point(d: Any) -> bool:
        # The accepted/s series (the first polyline): a point above the baseline (y = height - 2) is a non-zero rate.
        return d.execute_script(
            """
            const svg = document.querySelector("#chart-throughput");
            const line = svg.querySelector("polyline.s0");
            const baseline = Number(svg.dataset.baseline);
            const points = line ? (line.getAttribute("points") || "").trim() : "";
            return points !== "" && points.split(/\\s+/).some((p) => Number(p.split(",")[1]) < baseline - 0.5);
            """
        )

    wait(console, DATA_DEADLINE, accepted_point, "no non-zero point in the throughput chart's accepted/s line")
    polylines = console.find_elements(By.CSS_SELECTOR, "#chart-throughput polyline")
    assert polylines and any(p.get_attribute("points") for p in polylines)

    for pedido in pedidos:
        cells = wait_order_row(console, pedido, shipped=True)
        assert cells[0] == pedido and cells[1] == "1" and cells[3] == "59.98", cells
        assert cells[4].startswith("ECX-"), f"shipment cell {cells[4]!r}"

    def is_number(value: str | None) -> bool:
        try:
            return value is not None and float(value) >= 0
        except ValueError:
            return False

    # The workers' stats items (STATS#<role>, written every 5 s) reach the applied/s figures.
    for role in ("process", "logistics"):
        wait(
            console,
            DATA_DEADLINE,
            lambda d, role=role: is_number(text_of(d, f"#rate-{role}")),
            lambda role=role: f"applied/s ({role}) still {text_of(console, f'#rate-{role}')!r}",
        )
    assert_same_page(console, page)
    assert console.current_url == f"{stack.api}/console"
    console.execute_script("window.scrollTo(0, 0)")
    screenshot(console, "console-overview.png")


def test_the_charts_have_time_and_value_axes_and_lines_that_stay_apart(console: Any, stack: Stack) -> None:
    post_order(stack)

    def axes(d: Any) -> dict[str, Any] | None:
        return d.execute_script(
            """
            const svg = document.querySelector("#chart-throughput");
            const labels = Array.from(svg.querySelectorAll("text.axis"), (t) => t.textContent);
            const style = (selector) => {
              const line = svg.querySelector(selector);
              if (!line) return null;
              const s = getComputedStyle(line);
              return { width: parseFloat(s.strokeWidth), dash: s.strokeDasharray };
            };
            const [, , w, h] = svg.getAttribute("viewBox").split(" ").map(Number);
            return { labels, lines: [style("polyline.s0"), style("polyline.s1"), style("polyline.s2")],
                     stretched: Math.abs(w - svg.clientWidth) > 1 || Math.abs(h - svg.clientHeight) > 1,
                     legend: svg.nextElementSibling ? svg.nextElementSibling.textContent : "" };
            """
        )

    found = wait(
        console,
        DATA_DEADLINE,
        lambda d: (a := axes(d)) and len(a["labels"]) >= 6 and a["lines"][0] is not None and not a["stretched"] and a,
        lambda: f"chart axes (the viewBox must follow the chart's size in pixels): {axes(console)}",
    )
    labels = found["labels"]
    assert "0" in labels and "orders/s" in labels, labels
    clock = [label for label in labels if len(label) == 5 and label[2] == ":"]
    assert len(clock) >= 3, f"time labels (HH:MM, every 5 minutes): {labels}"
    accepted, process, logistics = found["lines"]
    assert accepted["width"] > process["width"], found
    assert len({accepted["dash"], process["dash"], logistics["dash"]}) == 3, f"three different dashes: {found}"
    assert "accepted/s" in found["legend"] and "last 15 min" in found["legend"], found["legend"]


HOSTILE_REQUEST_ID = '"><img/src=x/onerror=window.__pwned=3>'  # printable ASCII without spaces: the API keeps it


def test_an_order_is_found_by_id_or_customer_and_shows_its_path(console: Any, stack: Stack) -> None:
    cliente = str(uuid.uuid4())
    status, _, body = http(
        "POST",
        f"{stack.api}/api/pedidos",
        {"clienteId": cliente, "total": "12.50"},
        headers={"X-Request-Id": HOSTILE_REQUEST_ID},
    )
    assert status == 202, body
    pedido = json.loads(body)["pedidoId"]
    wait_order_row(console, pedido, shipped=True)
    page = install_marker(console)
    assert not console.find_element(By.ID, "order-view").is_displayed()

    def steps(d: Any) -> list[list[str]]:
        return d.execute_script(
            'return Array.from(document.querySelectorAll("#timeline tbody tr"), (r) => Array.from(r.cells, (c) => c.textContent));'
        )

    # From the latest orders table.
    click_when_ready(console, f'#latest tbody tr[data-pedido-id="{pedido}"] a.order')
    rows = wait(
        console,
        UI_DEADLINE,
        lambda d: d.find_element(By.ID, "order-view").is_displayed() and len(steps(d)) >= 3 and steps(d),
        lambda: f"timeline rows: {steps(console)}",
    )
    kinds = [row[1] for row in rows]
    assert kinds[0] == "accepted" and "applied" in kinds and "shipment" in kinds, rows
    accepted = rows[0]
    assert accepted[4] == HOSTILE_REQUEST_ID, f"the request id is shown as text: {accepted}"
    assert accepted[6], f"the SNS message id of the publish: {accepted}"
    for row in rows[1:]:
        assert row[3].endswith(" s"), f"a delay after acceptance: {row}"
    assert text_of(console, "#order-id") == pedido
    assert console.execute_script("return typeof window.__pwned") == "undefined", "hostile text ran as script"
    assert not console.find_elements(By.CSS_SELECTOR, "#order-view img, #order-view script")
    console.find_element(By.ID, "order-close").click()
    wait(console, UI_DEADLINE, lambda d: not d.find_element(By.ID, "order-view").is_displayed(), "close kept it")

    # By pedidoId in the search box.
    search = console.find_element(By.ID, "search-input")
    search.clear()
    search.send_keys(pedido, Keys.ENTER)
    wait(console, UI_DEADLINE, lambda d: d.find_element(By.ID, "order-view").is_displayed(), "search by pedidoId")
    wait(console, UI_DEADLINE, lambda d: text_of(d, "#order-id") == pedido, "the searched order")
    console.execute_script("document.querySelector('#find').scrollIntoView()")
    screenshot(console, "console-order.png")

    # By customer: the customer's orders, each opening its path.
    search = console.find_element(By.ID, "search-input")
    search.clear()
    search.send_keys(cliente, Keys.ENTER)
    wait(
        console,
        UI_DEADLINE,
        lambda d: pedido in (text_of(d, "#customer-orders tbody") or ""),
        lambda: f"customer search: {text_of(console, '#search-status')!r}",
    )
    assert text_of(console, "#search-status") == f"orders of customer {cliente}"
    search.clear()
    search.send_keys("<b>not an id</b>", Keys.ENTER)
    wait(console, UI_DEADLINE, lambda d: "UUID" in (text_of(d, "#search-status") or ""), "a bad search is explained")
    assert_same_page(console, page)
    assert console.execute_script("return window.__csp") == []


# ------------------------------------------------------------------------------------------------- the DLQ panel
@pytest.fixture(scope="module")
def xss_poison(stack: Stack) -> str:
    """The hostile body, sent straight to the process queue once per module: the worker dead-letters it."""
    stack.sqs().send_message(QueueUrl=stack.topology["PROCESS_QUEUE_URL"], MessageBody=XSS)
    return XSS


def test_a_poison_message_shows_in_the_dlq_panel_as_text(console: Any, stack: Stack, xss_poison: str) -> None:
    page = install_marker(console)
    # Until the operator asks, the panel reads no message (a listing receives each one: one more receive) and says so.
    wait(console, DATA_DEADLINE, lambda d: text_of(d, f"{PROCESS_DLQ} .dlq-status"), "the DLQ panel never appeared")
    note = text_of(console, f"{PROCESS_DLQ} .dlq-receive-note") or ""
    assert "one more receive" in note and console.find_element(
        By.CSS_SELECTOR, f"{PROCESS_DLQ} .dlq-receive-note"
    ).is_displayed(), f"the panel does not say that listing adds a receive: {note!r}"
    if console.execute_script("return document.querySelector(arguments[0]).dataset.opened", PROCESS_DLQ) != "true":
        assert not dlq_rows(console), "the panel listed messages before it was opened"
        assert "List messages" in (text_of(console, f"{PROCESS_DLQ} .dlq-status") or ""), text_of(
            console, f"{PROCESS_DLQ} .dlq-status"
        )
    row = wait_dlq_row(console, lambda r: r["body"] == xss_poison, "the XSS poison message")
    assert row["reason"] == "not_json", row
    assert "<script>" in row["body"], row
    assert "&lt;script&gt;" in row["bodyHtml"], f"the body was not inserted as text: {row['bodyHtml']!r}"
    assert console.execute_script("return typeof window.__pwned") == "undefined", "the DLQ body ran as script"
    for tag in ("img", "script"):
        assert not console.find_elements(By.CSS_SELECTOR, f"#dlqs {tag}"), f"an <{tag}> element inside the DLQ panels"
    assert console.execute_script("return window.__csp") == [], "the body reached markup (a CSP violation fired)"
    # The depth is SQS's count of visible messages: while a listing holds the message it is in flight, so a sample
    # taken then reads 0; the next one counts it again.
    depth = '.queue[data-role="process"] .d-visible'
    wait(
        console,
        DATA_DEADLINE,
        lambda d: (text_of(d, depth) or "").isdigit() and int(text_of(d, depth) or "0") >= 1,
        lambda: f"the DLQ depth says {text_of(console, depth)!r}",
    )
    assert_same_page(console, page)
    console.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'start'})", PROCESS_DLQ)
    screenshot(console, "console-dlq.png")


def test_redrive_selected_sends_a_message_back_and_the_worker_applies_it(console: Any, stack: Stack) -> None:
    sqs = stack.sqs()
    pedido = str(uuid.uuid4())
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event = {
        "type": "PedidoCreado",
        "version": 1,
        "occurredAt": now,
        "pedidoId": pedido,
        "clienteId": str(uuid.uuid4()),
        "fecha": now,
        "total": 59.98,
    }
    envelope = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": stack.topology["SNS_TOPIC_ARN"],
        "Subject": "Nuevo Pedido",
        "Message": json.dumps(event),
        "Timestamp": now,
        "SignatureVersion": "1",
        "MessageAttributes": {
            "eventType": {"Type": "String", "Value": "PedidoCreado"},
            "version": {"Type": "Number", "Value": "1"},
            "pedidoId": {"Type": "String", "Value": pedido},
        },
    }
    sent = sqs.send_message(
        QueueUrl=stack.topology["PROCESS_DLQ_URL"],
        MessageBody=json.dumps(envelope),
        MessageAttributes={
            "rejectReason": {"DataType": "String", "StringValue": "test_redrive"},
            "sourceQueue": {"DataType": "String", "StringValue": stack.topology["PROCESS_QUEUE_URL"]},
        },
    )
    message_id = sent["MessageId"]
    page = install_marker(console)
    row = wait_dlq_row(console, lambda r: r["id"] == message_id, f"the redrive candidate {message_id}")
    assert row["reason"] == "test_redrive", row
    assert latest_row(console, pedido) is None, "the order is applied before its redrive"

    wait_dlq_quiet(console)
    box = f'{PROCESS_DLQ} tbody input[data-message-id="{message_id}"]'

    redrive = "/console/api/dlq/process/redrive"

    def tick_and_redrive(d: Any) -> bool:
        checkbox = d.find_element(By.CSS_SELECTOR, box)
        if not checkbox.is_selected():
            checkbox.click()
        if not checkbox.is_selected():
            return False
        d.find_element(By.CSS_SELECTOR, f"{PROCESS_DLQ} .dlq-redrive-selected").click()
        # With nothing ticked (a refresh re-rendered the rows in between) the button sends nothing: tick again.
        return bool(posts(d, redrive))

    wait(console, UI_DEADLINE, tick_and_redrive, "redrive selected sent nothing")
    sent_posts = posts(console, redrive)
    assert len(sent_posts) == 1 and json.loads(sent_posts[0]["body"]) == {"messageIds": [message_id]}, sent_posts
    answered = wait(console, UI_DEADLINE, lambda d: posts(d, redrive)[0]["result"], "the redrive got no answer")
    assert posts(console, redrive)[0]["status"] == 200, posts(console, redrive)
    assert answered == {
        "done": 1,
        "failed": [],
        "notFound": [],
        "refused": [],
        "rejectedAgain": [],
        "leftForNextRun": 0,
        # The queue whose DLQ this is, never the message's own sourceQueue attribute (G36).
        "destination": stack.topology["PROCESS_QUEUE_URL"],
        "deadlineReached": False,
        "complete": True,
        "visibleLeft": None,
    }, answered
    wait(
        console,
        UI_DEADLINE,
        lambda d: all(r["id"] != message_id for r in dlq_rows(d)),
        "the redriven message is still in the DLQ panel",
    )
    cells = wait_order_row(console, pedido, shipped=False)
    assert cells[2] == "CREADO", cells
    assert_same_page(console, page)


def test_delete_selected_asks_first_and_removes_the_poison(console: Any, stack: Stack, xss_poison: str) -> None:
    page = install_marker(console)
    wait_dlq_row(console, lambda r: r["body"] == xss_poison, "the XSS poison message")
    poison_ids = {r["id"] for r in dlq_rows(console) if r["body"] == xss_poison}
    status = f"{PROCESS_DLQ} .dlq-status"

    def tick_all(d: Any) -> bool:
        for message_id in poison_ids:
            checkbox = d.find_element(By.CSS_SELECTOR, f'{PROCESS_DLQ} tbody input[data-message-id="{message_id}"]')
            if not checkbox.is_selected():
                checkbox.click()
        return all(
            d.find_element(By.CSS_SELECTOR, f'{PROCESS_DLQ} tbody input[data-message-id="{m}"]').is_selected()
            for m in poison_ids
        )

    # Dismissed: nothing happens.
    wait(console, UI_DEADLINE, tick_all, "could not tick the poison rows")
    console.find_element(By.CSS_SELECTOR, f"{PROCESS_DLQ} .dlq-delete-selected").click()
    alert = wait(console, UI_DEADLINE, ec.alert_is_present(), "delete selected did not ask for confirmation")
    assert f"Delete {len(poison_ids)} message(s)" in alert.text, alert.text
    alert.dismiss()
    assert not posts(console, "/console/api/dlq/process/delete"), "a dismissed confirmation still sent the delete"
    assert not (text_of(console, status) or "").startswith("delete"), "a dismissed confirmation still deleted"
    assert poison_ids <= {r["id"] for r in dlq_rows(console)}, "a dismissed confirmation removed rows"

    # Accepted: deleted for good.
    wait_dlq_quiet(console)
    wait(console, UI_DEADLINE, tick_all, "could not tick the poison rows again")
    console.find_element(By.CSS_SELECTOR, f"{PROCESS_DLQ} .dlq-delete-selected").click()
    wait(console, UI_DEADLINE, ec.alert_is_present(), "no confirmation the second time").accept()
    delete = "/console/api/dlq/process/delete"
    answered = wait(
        console,
        UI_DEADLINE,
        lambda d: (p := posts(d, delete)) and p[0]["result"],
        lambda: f"the delete got no answer: {posts(console, delete)}",
    )
    assert len(posts(console, delete)) == 1 and posts(console, delete)[0]["status"] == 200, posts(console, delete)
    assert set(json.loads(posts(console, delete)[0]["body"])["messageIds"]) == poison_ids
    expected = {
        "done": len(poison_ids),
        "failed": [],
        "notFound": [],
        # The redrive's fields, empty for a delete: it copies nothing, so it has no destination.
        "refused": [],
        "rejectedAgain": [],
        "leftForNextRun": 0,
        "destination": None,
        "deadlineReached": False,
        "complete": True,
        "visibleLeft": None,
    }
    assert answered == expected, answered
    wait(
        console,
        UI_DEADLINE,
        lambda d: not poison_ids & {r["id"] for r in dlq_rows(d)},
        "the deleted poison is still listed",
    )
    # Gone from the queue itself, not only from the page.
    left = (
        stack.sqs()
        .receive_message(
            QueueUrl=stack.topology["PROCESS_DLQ_URL"], MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        )
        .get("Messages", [])
    )
    assert not [m for m in left if m["Body"] == xss_poison], "the poison is still in the DLQ"
    assert_same_page(console, page)


def test_dlq_actions_refuse_a_post_without_the_csrf_token(console: Any) -> None:
    status = console.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch("/console/api/dlq/process/delete", {
          method: "POST", credentials: "same-origin",
          headers: {"Content-Type": "application/json"}, body: JSON.stringify({all: true}),
        }).then((r) => done(r.status), (e) => done(String(e)));
        """
    )
    assert status == 403, f"a cookie-authenticated POST without X-CSRF-Token answered {status}"


# ----------------------------------------------------------------------------------------------- the worker's own page
def test_the_worker_page_streams_outcomes_filters_them_and_shows_hostile_text_as_text(
    driver: Any, stack: Stack
) -> None:
    driver.get(f"{stack.process_worker}/")
    wait(
        driver,
        UI_DEADLINE,
        lambda d: text_of(d, "#connection") == "live",
        lambda: f"worker page connection: {text_of(driver, '#connection')!r}",
    )
    page = install_marker(driver)

    def line(d: Any, column: str, value: str) -> dict[str, Any] | None:
        return d.execute_script(
            """
            for (const row of document.querySelectorAll("#rows tr")) {
              const cell = row.querySelector("td." + arguments[0]);
              if (cell && cell.textContent === arguments[1]) {
                return {
                  outcome: row.querySelector("td.outcome").textContent,
                  reason: row.querySelector("td.reason").textContent,
                  request: row.querySelector("td.request").textContent,
                  requestHtml: row.querySelector("td.request").innerHTML,
                  hidden: row.hidden,
                };
              }
            }
            return null;
            """,
            column,
            value,
        )

    pedido = post_order(stack)
    processed = wait(
        driver,
        DATA_DEADLINE,
        lambda d: line(d, "pedido", pedido),
        f"no outcome line for order {pedido} on the worker page",
    )
    assert processed["outcome"] == "processed" and not processed["hidden"], processed

    # Poison with a hostile requestId (the page shows the request id; it never shows bodies).
    sent = stack.sqs().send_message(
        QueueUrl=stack.topology["PROCESS_QUEUE_URL"],
        MessageBody=XSS,
        MessageAttributes={"requestId": {"DataType": "String", "StringValue": XSS}},
    )
    poison_id = sent["MessageId"]
    rejected = wait(
        driver,
        DATA_DEADLINE,
        lambda d: line(d, "message", poison_id),
        f"no outcome line for the poison message {poison_id}",
    )
    assert rejected["outcome"] == "rejected" and rejected["reason"] == "not_json", rejected
    assert rejected["request"] == XSS and "&lt;script&gt;" in rejected["requestHtml"], rejected
    assert driver.execute_script("return typeof window.__pwned") == "undefined", "hostile text ran as script"
    assert not driver.find_elements(By.CSS_SELECTOR, "#rows img, #rows script"), "hostile text became markup"
    assert driver.execute_script("return window.__csp") == []

    def hidden(d: Any) -> tuple[bool, bool]:
        return line(d, "pedido", pedido)["hidden"], line(d, "message", poison_id)["hidden"]

    driver.find_element(By.ID, "show-problems").click()
    wait(driver, UI_DEADLINE, lambda d: hidden(d) == (True, False), lambda: f"problems only: hidden = {hidden(driver)}")
    driver.find_element(By.CSS_SELECTOR, '#outcomes input[value="rejected"]').click()
    wait(
        driver,
        UI_DEADLINE,
        lambda d: hidden(d) == (True, True),
        lambda: f"rejected unticked: hidden = {hidden(driver)}",
    )
    driver.find_element(By.ID, "show-all").click()
    wait(driver, UI_DEADLINE, lambda d: hidden(d) == (False, False), lambda: f"all: hidden = {hidden(driver)}")
    search = driver.find_element(By.ID, "search")
    search.send_keys(pedido)
    wait(driver, UI_DEADLINE, lambda d: hidden(d) == (False, True), lambda: f"search: hidden = {hidden(driver)}")
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(Keys.BACKSPACE)  # a key press fires the input event (`clear()` does not)
    wait(
        driver, UI_DEADLINE, lambda d: hidden(d) == (False, False), lambda: f"search cleared: hidden = {hidden(driver)}"
    )

    def rejected_count(d: Any) -> int:
        return int(
            d.execute_script(
                "return document.querySelector('#outcomes input[value=rejected]').parentElement"
                ".querySelector('.count').textContent"
            )
        )

    # The counters arrive every 2 s, on their own event.
    wait(driver, UI_DEADLINE, lambda d: rejected_count(d) >= 1, lambda: f"rejected counter {rejected_count(driver)}")
    assert_same_page(driver, page)

    # Opened again (a new page, nothing new sent): the worker's backlog shows what happened before, and the page fits
    # a 1,280 px window without scrolling sideways.
    driver.set_window_size(1280, 900)
    driver.get(f"{stack.process_worker}/")
    wait(
        driver,
        DATA_DEADLINE,
        lambda d: line(d, "pedido", pedido) and line(d, "message", poison_id),
        "the reopened page does not show the lines from before it was opened",
    )
    width = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways at 1280 px: {width}"
    screenshot(driver, "worker-live.png")


# ------------------------------------------------------------------------------------------------- logout
def test_logout_ends_the_browser_session(console: Any, stack: Stack) -> None:
    console.find_element(By.ID, "logout").click()
    wait(
        console,
        UI_DEADLINE,
        lambda d: d.current_url == f"{stack.api}/console/login",
        "logout did not reach the login page",
    )
    assert not [c for c in console.get_cookies() if c["name"] == "pedidos_admin"], "the session cookie survived logout"
    console.get(f"{stack.api}/console")
    wait(console, UI_DEADLINE, lambda d: d.current_url == f"{stack.api}/console/login", "/console opened after logout")
