"""Browser tests: the web UI in a real headless Chromium (Debian's chromium and
chromium-driver, driven with selenium from PyPI) against `stevedore standalone` running real
containers. Run by scripts/browser-test.sh, which starts Stevedore and sets:

    STEVEDORE_URL      the server, e.g. http://127.0.0.1:PORT
    STEVEDORE_TOKEN    an operator token
    SCREENSHOTS_DIR    where each view's screenshot goes (docs/screenshots for the docs)
"""

import os
import time
import unittest

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

URL = os.environ["STEVEDORE_URL"]
TOKEN = os.environ["STEVEDORE_TOKEN"]
SHOTS = os.environ["SCREENSHOTS_DIR"]


def wait_for(what, condition, timeout=120, every=0.25):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except WebDriverException:
            # The page re-rendered between finding an element and reading it, the next page
            # has not arrived yet, or the old page's document went away mid-read (a stale
            # element, no such element, a lost node or execution context): look again.
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


class Ui(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--hide-scrollbars"):
            options.add_argument(argument)
        cls.browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        cls.browser.set_page_load_timeout(30)
        os.makedirs(SHOTS, exist_ok=True)

    @classmethod
    def tearDownClass(cls):
        cls.browser.quit()

    def setUp(self):
        # Each test starts as a browser that has not logged in.
        self.browser.get(f"{URL}/login")
        self.browser.delete_all_cookies()

    def log_in(self):
        b = self.browser
        b.get(f"{URL}/login")
        b.find_element(By.ID, "token").send_keys(TOKEN)
        b.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait_for("the jobs page", lambda: b.current_url.endswith("/jobs"))

    def grid_states(self, job, run_id):
        """The states of the run's column in the job's grid, once all are success."""
        self.browser.get(f"{URL}/jobs/{job}?run={run_id}")
        cells = self.css(f"svg.grid a[data-run='{run_id}']")
        states = [c.get_attribute("data-state") for c in cells]
        return states if states and all(s == "success" for s in states) else None

    def shot(self, name):
        self.browser.save_screenshot(os.path.join(SHOTS, f"{name}.png"))

    def css(self, selector):
        return self.browser.find_elements(By.CSS_SELECTOR, selector)

    def no_alert(self):
        try:
            alert = self.browser.switch_to.alert
        except NoAlertPresentException:
            return
        text = alert.text
        alert.dismiss()
        self.fail(f"a script ran: alert({text!r})")

    def test_the_operator_journey(self):
        b = self.browser
        # Log in: any page sends a browser without a session to the login form.
        b.get(f"{URL}/jobs/ui_demo")
        self.assertIn("/login", b.current_url)
        self.shot("login")
        b.find_element(By.ID, "token").send_keys(TOKEN)
        b.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait_for("the job page after login", lambda: b.current_url.endswith("/jobs/ui_demo"))

        # Trigger the example job from its form and watch its grid turn green.
        b.get(f"{URL}/jobs/example_etl?tab=trigger")
        records = b.find_element(By.ID, "param-records")
        records.clear()
        records.send_keys("600")
        b.find_element(By.CSS_SELECTOR, "form.trigger button[type=submit]").click()
        wait_for("the example job's new run", lambda: "run=" in b.current_url)
        example_run = b.current_url.split("run=")[1].split("&")[0]
        states = wait_for("the example job's grid to turn green",
                          lambda: self.grid_states("example_etl", example_run), timeout=120, every=1)
        self.assertEqual(len(states), 5)
        self.shot("grid-example")

        # A job with a slow step, to watch a log grow.
        b.get(f"{URL}/jobs/ui_demo?tab=trigger")
        records = b.find_element(By.ID, "param-records")
        records.clear()
        records.send_keys("500")
        self.shot("trigger")
        b.find_element(By.CSS_SELECTOR, "form.trigger button[type=submit]").click()
        wait_for("the grid of the new run", lambda: "run=" in b.current_url)
        run_id = b.current_url.split("run=")[1].split("&")[0]

        # Open the slow task's log while its container runs and see a line arrive live.
        def slow_try_link():
            b.get(f"{URL}/runs/{run_id}")
            links = [a for a in self.css("table.instances a") if a.text == "slow"]
            return links[0].get_attribute("href") if links else None
        link = wait_for("the slow task to start", slow_try_link, timeout=120, every=0.5)
        b.get(link)
        self.assertEqual(self.css(".title-row .state")[0].text, "running")
        self.assertTrue(self.css("#live"), "a running try's log is followed live")
        # The try prints `sleeping 6s`, then a `tick` a second: the page may open before or
        # after the first line, so it waits for a tick, which comes only while it is open.
        before = len(self.css("#log .line"))

        def grown_with_a_tick():
            texts = [e.text for e in self.css("#log .line .text")]
            grown = len(texts) > before and any(t.startswith("tick ") for t in texts)
            return texts if grown else None
        texts = wait_for("a new tick line without reloading", grown_with_a_tick, timeout=30)
        self.assertTrue(any(t.startswith("tick ") for t in texts), texts)
        self.shot("try-live-log")
        # When the try ends the page shows its exit code.
        wait_for("the try to end", lambda: self.css("#exit-code") and self.css("#exit-code")[0].text == "0",
                 timeout=60, every=0.5)

        # The grid turns green: every task of the run succeeds.
        states = wait_for("the grid to turn green", lambda: self.grid_states("ui_demo", run_id),
                          timeout=120, every=1)
        self.assertEqual(len(states), 3)
        colour = self.css(f"svg.grid a[data-run='{run_id}'] rect")[0].value_of_css_property("fill")
        self.assertEqual(colour, "rgb(0, 128, 0)")
        self.shot("grid")
        b.get(f"{URL}/jobs/ui_demo?tab=graph&run={run_id}")
        nodes = self.css("svg.graph g.node")
        self.assertEqual(sorted(n.get_attribute("data-task") for n in nodes), ["extract", "report", "slow"])
        self.assertTrue(all(n.get_attribute("data-state") == "success" for n in nodes))
        self.shot("graph")
        b.get(f"{URL}/jobs/ui_demo?tab=file")
        self.assertIn("id: ui_demo", self.css("pre.source")[0].text)
        self.shot("job-file")

        # Clear a task on the run page and see its new try.
        b.get(f"{URL}/runs/{run_id}")
        self.assertTrue(self.css("svg.gantt rect.queued"))
        self.shot("run-gantt")
        row = [r for r in self.css("table.instances tbody tr") if r.find_element(By.CSS_SELECTOR, "td").text == "report"][0]
        row.find_element(By.XPATH, ".//button[text()='Clear']").click()

        def second_try():
            b.get(f"{URL}/runs/{run_id}")
            rows = [r.text for r in self.css("table.tries tbody tr")]
            return [r for r in rows if r.startswith("report 2 success")]
        wait_for("the cleared task's second try to succeed", second_try, timeout=120, every=1)

        b.get(f"{URL}/pools")
        self.shot("pools")
        b.get(f"{URL}/jobs")
        self.shot("jobs")

    def test_a_failing_alert_is_seen_and_sent_again(self):
        b = self.browser
        self.log_in()
        b.get(f"{URL}/jobs/alerting_demo?tab=trigger")
        b.find_element(By.CSS_SELECTOR, "form.trigger button[type=submit]").click()
        wait_for("the new run", lambda: "run=" in b.current_url)
        run_id = b.current_url.split("run=")[1].split("&")[0]

        def failing_row():
            b.get(f"{URL}/notifications?job=alerting_demo&failed=1")
            rows = [r for r in self.css("table.notifications tbody tr") if run_id[:13] in r.text]
            return rows[0] if rows and "failing" in rows[0].text else None
        row = wait_for("the run's alert to fail its delivery", failing_row, timeout=120, every=1)
        self.assertIn("failure", row.text)
        self.assertIn("cannot reach the webhook", row.text)
        self.shot("alerts")
        row.find_element(By.XPATH, ".//button[text()='Send again']").click()
        wait_for("the run page", lambda: b.current_url.endswith(f"/runs/{run_id}"))
        headings = [h.text for h in self.css("main h2")]
        self.assertIn("Alerts", headings)
        self.assertTrue(self.css("table.notifications tbody tr"), "the run's alerts are listed")

    def test_a_task_s_state_is_seen_set_and_cleared_on_its_try_page(self):
        b = self.browser
        self.log_in()
        b.get(f"{URL}/jobs/state_demo?tab=trigger")
        b.find_element(By.CSS_SELECTOR, "form.trigger button[type=submit]").click()
        wait_for("the new run", lambda: "run=" in b.current_url)
        run_id = b.current_url.split("run=")[1].split("&")[0]
        try_page = f"{URL}/runs/{run_id}/tasks/extract/tries/1"

        def committed():
            b.get(try_page)
            value = self.css("#state-value")
            return value[0].text if value and "cursor" in value[0].text else None
        text = wait_for("the run's state to be committed", committed, timeout=120, every=1)
        self.assertIn("committed by run", b.find_element(By.ID, "state").text)
        self.assertIn('"cursor"', text)

        b.find_element(By.CSS_SELECTOR, "details.state-edit summary").click()
        field = b.find_element(By.ID, "state-json")
        field.clear()
        field.send_keys('{"cursor": "2020-01-01T00:00:00Z"}')
        b.find_element(By.XPATH, "//button[text()='Set state']").click()
        def state_text(needle):
            # Between the form's post and the page after it, the element may not exist yet.
            found = self.css("#state-value")
            return found and needle in found[0].text
        wait_for("the set state", lambda: state_text("2020-01-01T00:00:00Z"))
        wait_for("who set it", lambda: any("set by browser" in e.text for e in self.css("#state")))
        b.find_element(By.CSS_SELECTOR, "#state details summary").click()
        self.shot("state")
        b.find_element(By.CSS_SELECTOR, "details.state-edit summary").click()
        b.find_element(By.XPATH, "//button[text()='Clear state']").click()
        wait_for("the cleared state", lambda: state_text("No committed state"))
        self.assertTrue(b.current_url.startswith(try_page), b.current_url)

    def test_a_mapped_task_shows_its_instances_counted_and_expandable(self):
        b = self.browser
        self.log_in()
        b.get(f"{URL}/jobs/per_account?tab=trigger")
        b.find_element(By.CSS_SELECTOR, "form.trigger button[type=submit]").click()
        wait_for("the new run", lambda: "run=" in b.current_url)
        run_id = b.current_url.split("run=")[1].split("&")[0]

        def mapped_cell():
            # Every cell of the run green, the mapped task's among them.
            if not self.grid_states("per_account", run_id):
                return None
            cells = self.css(f"svg.grid a[data-run='{run_id}'][data-task='extract']")
            return cells and cells[0].get_attribute("data-mapped")
        mapped = wait_for("the run's grid to turn green", mapped_cell, timeout=180, every=1)
        self.assertEqual(mapped, "5")

        b.get(f"{URL}/jobs/per_account?tab=graph&run={run_id}")
        node = b.find_element(By.CSS_SELECTOR, "svg.graph g.node[data-task='extract']")
        self.assertEqual(node.get_attribute("data-mapped"), "5")
        self.assertEqual(node.find_element(By.TAG_NAME, "text").text, "extract [5]")

        b.get(f"{URL}/runs/{run_id}")
        summary = b.find_element(By.CSS_SELECTOR, "tr.mapped[data-task='extract']")
        self.assertIn("mapped × 5", summary.text)
        self.assertIn("5 success", summary.text)
        instances = self.css("details[data-task='extract'] tr[data-instance]")
        self.assertFalse(instances[0].is_displayed(), "the instances are folded at first")
        b.find_element(By.CSS_SELECTOR, "details[data-task='extract'] summary").click()
        rows = {r.get_attribute("data-instance"): r for r in instances}
        self.assertEqual(sorted(rows), [f"extract[{i}]" for i in range(5)])
        self.assertTrue(rows["extract[0]"].is_displayed())
        # The third account failed once: its instance alone was tried twice.
        tries = {key: row.find_elements(By.TAG_NAME, "td")[2].text for key, row in rows.items()}
        self.assertEqual(tries, {"extract[0]": "1", "extract[1]": "1", "extract[2]": "2",
                                 "extract[3]": "1", "extract[4]": "1"})
        self.shot("mapping")
        rows["extract[2]"].find_element(By.TAG_NAME, "a").click()
        wait_for("the instance's try page", lambda: "/tasks/extract%5B2%5D/tries/2" in b.current_url
                 or "/tasks/extract[2]/tries/2" in b.current_url)
        self.assertIn("extracting 30 records", b.find_element(By.TAG_NAME, "main").text)

    def test_user_text_is_never_markup(self):
        b = self.browser
        self.log_in()
        b.get(f"{URL}/jobs")
        self.no_alert()
        page = b.find_element(By.TAG_NAME, "main").text
        self.assertIn("<script>alert('xss')</script>", page)
        self.assertIn("job id `<img src=x onerror=alert(1)>`", page)
        self.assertFalse(self.css("main img"), "an <img> from user text")
        b.get(f"{URL}/jobs/xss_probe")
        self.no_alert()
        self.shot("escaping")

    def test_phone_width(self):
        b = self.browser
        self.log_in()
        b.set_window_size(390, 844)
        try:
            for path in ("/jobs", "/jobs/ui_demo", "/pools", "/notifications"):
                b.get(f"{URL}{path}")
                overflow = b.execute_script(
                    "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
                self.assertLessEqual(overflow, 0, f"{path} scrolls sideways on a phone")
            b.get(f"{URL}/jobs")
            self.shot("jobs-phone")
        finally:
            b.set_window_size(1280, 900)


if __name__ == "__main__":
    unittest.main(verbosity=2)
