"""``aiosd web`` driven in a real headless browser (Debian's chromium through chromedriver and selenium).

One world for the module: a scheduler, an LLM worker (the embedded model), a
task runner and the console, all real processes. The browser logs in, watches
a batch's progress bar advance on the overview, opens the batch's page
(counts, throughput chart, failures, downloads), approves and denies pending
syscalls (the agent gets its reply), and reads the agents, workers and audit
pages. Unauthenticated and cross-site requests are refused. The screenshots
in docs/ are taken by this run.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from aiosd.daemon.admin.web.auth import local_path
from aiosd.daemon.admin.web.charts import bar_chart, buckets, sparkline

from .harness import ROOT, AgentRegistry, RunnerProcess, SchedulerProcess, WorkerProcess, World, aiosd_command
from .rawamqp import RawAgent

pytestmark = pytest.mark.timeout(400)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
USER, PASSWORD = "night-shift", "correct horse battery staple"
DOCS = ROOT / "docs"
#: Tasks of the batch the browser watches: two memory notes each, one at a time, against a quota of
#: 200 notes, so it runs for several refreshes of the page and its last 20 tasks fail.
TASKS = 120


class WebProcess(SchedulerProcess):
    """An ``aiosd web`` subprocess on a free port; :attr:`url` once it listens."""

    def __init__(self, world: World, log_dir: Path, **settings: str) -> None:
        super().__init__(world, log_dir, web_user=USER, web_password=PASSWORD, web_port="0", **settings)
        self.log_path = log_dir / "web.log"
        self.url = ""

    def start(self, wait: bool = True) -> WebProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(aiosd_command("web"), env=self.env, stdout=self._log, stderr=self._log)
        self.url = str(self.wait_for("web_ready")["url"]).rstrip("/")
        return self


@pytest.fixture(scope="module")
def system(shared_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Scheduler, LLM worker and console, running for the whole module."""
    logs = tmp_path_factory.mktemp("web")
    started: list[SchedulerProcess] = []
    try:
        started.append(SchedulerProcess(shared_world, logs, approval_poll="0.2", task_lease_ttl="3").start())
        started.append(WorkerProcess(shared_world, logs, worker_id="gpu0", heartbeat_interval="1").start())
        web = WebProcess(shared_world, logs).start()
        started.append(web)
        yield {"url": web.url, "logs": logs}
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: `scripts/services.sh browser` installs chromium and chromium-driver"
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1400",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # the live refresh swapped the element out while it was read: try again
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def log_in(driver: WebDriver, url: str, page: str = "/") -> None:
    driver.get(url + page)
    if "/login" in driver.current_url:
        driver.find_element(By.ID, "username").send_keys(USER)
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login").click()
    wait_for(lambda: "/login" not in driver.current_url and driver.current_url.endswith(page))


def session(driver: WebDriver, url: str) -> httpx.Client:
    """An HTTP client carrying the browser's session cookie."""
    client = httpx.Client(base_url=url, timeout=30)
    for cookie in driver.get_cookies():
        client.cookies.set(cookie["name"], cookie["value"])
    return client


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_unauthenticated_requests_are_refused(system: dict[str, Any]) -> None:
    with httpx.Client(base_url=system["url"], timeout=30) as anon:
        assert anon.get("/").status_code == 303 and anon.get("/").headers["location"] == "/login?next=/"
        assert anon.get("/batches/b-1/results.csv").status_code == 303
        for path in ("/api/overview", "/part/overview", "/api/batches/b-1"):
            assert anon.get(path).status_code == 401, path
        assert anon.post("/approvals", data={"id": "x", "decision": "approve"}).status_code == 401
        assert anon.get("/static/console.css").status_code == 200  # the login page needs its style
        form = anon.get("/login")
        assert form.status_code == 200 and form.headers["x-frame-options"] == "DENY"
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        wrong = anon.post("/login", data={"username": USER, "password": "guess", "csrf_token": token[1]})
        assert wrong.status_code == 401 and "wrong login or password" in wrong.text
        assert anon.get("/api/overview").status_code == 401
        # A login form posted without the session's CSRF token (from another site) is refused.
        assert anon.post("/login", data={"username": USER, "password": PASSWORD, "csrf_token": "x"}).status_code == 403
        ok = anon.post("/login", data={"username": USER, "password": PASSWORD, "csrf_token": token[1]})
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        assert "aiosd is" in anon.get("/").text
        assert anon.get("/api/overview").json()["schedulers"][0]["state"] == "up"
        forged = anon.post("/approvals", data={"id": "x", "decision": "approve", "csrf_token": "forged"})
        assert forged.status_code == 403


def test_batch_progress_page_and_downloads(
    system: dict[str, Any], browser: WebDriver, shared_world: World, registry: AgentRegistry, tmp_path: Path
) -> None:
    url = system["url"]
    registry.add("nightly", "--memory-notes", "200")
    runner_url = registry.add("runner", "--runner")
    lines = [{"input": {"value": i, "notes": 2}, "key": f"doc-{i}"} for i in range(TASKS)]
    done = registry.cli(
        "batch", "submit", str(write_jsonl(tmp_path / "docs.jsonl", lines)), "--program", "echo",
        "--agent", registry.name("nightly"), "--name", "nightly-notes", "--max-concurrent", "1", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    batch_id = json.loads(done.stdout)["batch"]

    log_in(browser, url)
    bar = f'#part-overview .batch-progress[data-batch="{batch_id}"]'
    seen = [int(wait_for(lambda: browser.find_element(By.CSS_SELECTOR, bar)).get_attribute("data-done"))]
    assert seen == [0]  # no runner yet
    runner = RunnerProcess(shared_world, system["logs"], runner_url, task_lease_ttl="3", runner_capacity="1").start()
    try:
        deadline = time.monotonic() + 180
        while found := browser.find_elements(By.CSS_SELECTOR, bar):  # a finished batch leaves the list
            assert time.monotonic() < deadline, seen
            try:
                value = int(found[0].get_attribute("data-done"))
            except StaleElementReferenceException:  # swapped by the live refresh while read
                continue
            if value != seen[-1] and 0 < value < TASKS:  # the latest mid-run view is the one kept
                browser.save_screenshot(str(DOCS / "screenshot-overview.png"))
            if value != seen[-1]:
                seen.append(value)
            time.sleep(0.2)
    finally:
        runner.stop()
    intermediate = [v for v in seen if 0 < v < TASKS]
    assert intermediate and seen == sorted(seen), seen  # it advanced, live, without a reload

    # The batch list links to the batch's page: counts, chart, failures, downloads.
    browser.get(url + "/batches")
    wait_for(lambda: browser.find_element(By.LINK_TEXT, batch_id)).click()
    wait_for(lambda: browser.current_url.endswith(f"/batches/{batch_id}"))
    counts = wait_for(lambda: _counts(browser) if _counts(browser)["queued"] == 0 else None, timeout=60)
    assert counts["succeeded"] + counts["failed"] == TASKS and counts["failed"] >= 1, counts
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar"), "the throughput chart has no bar"
    failures = browser.find_elements(By.CSS_SELECTOR, "#failures tr")[1:]
    assert len(failures) == counts["failed"] and "quota" in failures[0].text, failures[0].text
    browser.save_screenshot(str(DOCS / "screenshot-batch.png"))
    with session(browser, url) as client:
        csv_lines = client.get(browser.find_element(By.ID, "download-csv").get_attribute("href")).text.splitlines()
        jsonl = client.get(f"/batches/{batch_id}/results.jsonl?failed=1")
        figures = client.get(f"/api/batches/{batch_id}").json()
    assert csv_lines[0].startswith("task,line,key,state") and len(csv_lines) == TASKS + 1
    assert csv_lines[1].split(",")[2] == "doc-0"
    assert jsonl.headers["content-disposition"] == f'attachment; filename="{batch_id}-failed.jsonl"'
    assert len(jsonl.text.splitlines()) == counts["failed"]
    assert figures["state"] == "finished" and figures["done"] == TASKS


def _counts(driver: WebDriver) -> dict[str, int]:
    cells = driver.find_elements(By.CSS_SELECTOR, "#counts td[data-count]")
    return {c.get_attribute("data-count"): int(c.text) for c in cells}


def test_approve_and_deny_from_the_console(
    system: dict[str, Any], browser: WebDriver, shared_world: World, registry: AgentRegistry
) -> None:
    url = system["url"]
    agent_url = registry.add("cautious", "--approve", "memory.add")
    agent = RawAgent(agent_url, user=registry.name("cautious"))
    try:
        ask = []
        for i in range(2):  # one at a time: the raw agent drops replies it is not waiting for
            ask.append(_publish(agent, f"note {i}"))
            assert agent.wait(ask[-1])["status"] == "pending"
        log_in(browser, url, "/approvals")
        keys = [f"{registry.name('cautious')}/{call_id}" for call_id in ask]
        _decide(browser, keys[0], "approve", "fine by the night shift")
        assert "approved" in wait_for(lambda: browser.find_element(By.ID, "flash").text)
        final = agent.wait(ask[0])
        assert final["status"] == "ok" and final["result"]["id"].startswith("n_")
        _decide(browser, keys[1], "deny", "")  # a denial needs a reason: nothing is decided
        assert "needs a reason" in wait_for(lambda: browser.find_element(By.ID, "flash").text)
        _decide(browser, keys[1], "deny", "not tonight")
        assert "denied" in wait_for(lambda: browser.find_element(By.ID, "flash").text)
        denied = agent.wait(ask[1])
        assert denied["error"]["code"] == "approval_denied" and "not tonight" in denied["error"]["message"]
    finally:
        agent.close()
    approved = shared_world.db().audit.find_one({"message_id": ask[0], "decision": "approved"})
    assert approved["actor"] == f"operator:{USER}@web" and approved["reason"] == "fine by the night shift"
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, "#approvals tr[data-approval]"), timeout=20)

    # The audit page shows the decisions and the chain's verification.
    browser.get(url + "/audit")
    table = wait_for(lambda: browser.find_element(By.ID, "audit")).text
    assert "approved" in table and "approval_denied" in table and f"operator:{USER}@web" in table

    # Opening the page asks for a fresh verification; it soon covers the decisions.
    def verified_up_to() -> int:
        return int(browser.find_element(By.ID, "verify").get_attribute("data-head") or 0)

    assert wait_for(lambda: verified_up_to() >= approved["_id"], timeout=60)
    assert browser.find_element(By.ID, "verify").get_attribute("data-ok") == "true"


def _publish(agent: RawAgent, content: str) -> str:
    body = json.dumps({"syscall": "memory.add", "args": {"content": content}}).encode()
    return agent.publish(body, routing_key="memory.add")


def _decide(driver: WebDriver, key: str, decision: str, reason: str) -> None:
    row = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, f'#approvals tr[data-approval="{key}"]'))
    field = row.find_element(By.NAME, "reason")
    field.clear()
    field.send_keys(reason)
    row.find_element(By.CSS_SELECTOR, f"button.{decision}").click()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(row))  # the post redirected to a new page


def test_workers_and_agents_pages(system: dict[str, Any], browser: WebDriver, registry: AgentRegistry) -> None:
    url = system["url"]
    log_in(browser, url, "/workers")
    row = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, '#worker-load tr[data-worker="gpu0"]'))
    assert row.get_attribute("data-state") == "up" and "llamacpp" in row.text
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#worker-load polyline.spark-line"), timeout=30)
    browser.get(url + "/agents")
    nightly = wait_for(
        lambda: browser.find_element(By.CSS_SELECTOR, f'#agents tr[data-agent="{registry.name("nightly")}"]')
    )
    assert "200 / 200" in nightly.text  # memory notes used up against the quota


def test_the_console_needs_a_password(world: World) -> None:
    env = world.env(AIOSD_WEB_PORT="0")
    done = subprocess.run(aiosd_command("web"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 78 and "web_password" in done.stderr


# -- pure helpers, in process ---------------------------------------------------------------


def test_next_after_login_stays_on_the_site() -> None:
    assert local_path("/batches/b-1?x=1") == "/batches/b-1?x=1"
    for outside in (None, "", "https://evil.example/", "//evil.example/", "/\\evil.example/", "batches"):
        assert local_path(outside) == "/", outside


def test_throughput_buckets_and_chart() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    times = [start + timedelta(seconds=s) for s in (0, 1, 59, 61, 600, 601, 602)]
    step, counts = buckets(times, start, start + timedelta(seconds=610))
    assert step == 15 and len(counts) == 41 and sum(counts) == 7
    assert counts[0] == 2 and counts[3] == 1 and counts[4] == 1 and counts[40] == 3
    chart = bar_chart(counts, start, step)
    assert chart["max"] == 3 and chart["title"] == "tasks finished per 15s"
    tallest = max(chart["bars"], key=lambda b: b["h"])
    assert tallest["n"] == 3 and tallest["y"] == chart["top_y"] and tallest["y"] + tallest["h"] == chart["base"]
    assert sum(buckets([], start, start)[1]) == 0
    points = sparkline([(100.0, 0.0), (150.0, 1.0), (10.0, 0.5)], now=200.0, window=100.0, width=100, height=10)
    assert points == "0.0,8.0 50.0,2.0"  # the sample older than the window is left out
