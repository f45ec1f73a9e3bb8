"""Drive the Airflow UI's trigger form in Debian's chromium (Selenium), as a user would.

Test infrastructure for test_cluster_live.py. JSON params (`models`, `judge`,
`reference_model`) are Monaco editors: their text is replaced by selecting all and
pasting the new JSON (typing it key by key would let the editor's auto-closing of
brackets and quotes mangle it). Text fields get their text as one input event, checked.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from pathlib import Path

import requests

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def make_driver():
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,2200",
        "--lang=en-US",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(120)
    return driver


def _wait(cond, timeout: float = 60, what: str = "element"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            out = cond()
            if out:
                return out
        except Exception as err:  # noqa: BLE001 - not there yet
            last = err
        time.sleep(0.5)
    raise TimeoutError(f"{what} not found after {timeout:.0f} s ({last})")


def login(driver, url: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/auth/login")
    _wait(lambda: driver.find_element(By.NAME, "username"), what="login form").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(lambda: "/auth/login" not in driver.current_url, what="redirect after login")


def _plain(text: str) -> str:
    """A description as the form shows it (markdown rendered): words only."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def field(driver, name: str):
    """The form element of param `name` (ids sit on the input or on its widget's root)."""
    from selenium.webdriver.common.by import By

    for how, what in (
        (By.ID, f"element_{name}"),
        (By.NAME, f"element_{name}"),
        (By.CSS_SELECTOR, f"[id*='element_{name}']"),
    ):
        found = driver.find_elements(how, what)
        if found:
            return found[0]
    return None


def set_json_editor(driver, name: str, value) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = field(driver, name)
    target = box.find_elements(By.CSS_SELECTOR, ".view-lines") or [box]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", target[0])
    target[0].click()
    select_all = ActionChains(driver).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL)
    if value is None:  # an empty editor is a null param
        select_all.send_keys(Keys.BACKSPACE).perform()
    else:
        # replace the selection in one input event: emptying the editor first would make
        # the form put an empty "[]"/"{}" back in, around the text inserted next
        select_all.perform()
        # a paste, as a user pasting the JSON: typed text would meet the editor's
        # auto-closing of brackets and quotes
        area = box.find_element(By.CSS_SELECTOR, "textarea")
        driver.execute_script(
            "const dt = new DataTransfer(); dt.setData('text/plain', arguments[1]);"
            "arguments[0].dispatchEvent(new ClipboardEvent('paste', "
            "{clipboardData: dt, bubbles: true, cancelable: true}));",
            area,
            json.dumps(value),
        )
    time.sleep(0.5)


def set_text(driver, name: str, value) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    el = field(driver, name)
    if el.tag_name not in ("input", "textarea"):
        el = el.find_element(By.CSS_SELECTOR, "input, textarea")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()
    el.send_keys(Keys.CONTROL, "a")
    driver.execute_cdp_cmd("Input.insertText", {"text": str(value)})  # replaces the selection
    time.sleep(0.3)
    if el.get_attribute("value") != str(value):
        raise AssertionError(f"{name}: the form holds {el.get_attribute('value')!r}, not {value!r}")


def drive_trigger_form(cluster: dict, *, source: str, sample: int, models: list, judge: dict, outputs: Path) -> dict:
    """Log in, open the form, read every param's description, fill it in, trigger.
    Returns {"params": {name: description as shown, "" if not shown}, "run_id": ...}."""
    from selenium.webdriver.common.by import By

    url, user, password = cluster["AIRFLOW_URL"], cluster["AIRFLOW_USER"], cluster["AIRFLOW_PASSWORD"]
    token = requests.post(f"{url}/auth/token", json={"username": user, "password": password}, timeout=30).json()[
        "access_token"
    ]
    details = requests.get(
        f"{url}/api/v2/dags/router_pipeline/details", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ).json()
    declared = {k: (v.get("description") or "") for k, v in details["params"].items()}
    outputs.mkdir(parents=True, exist_ok=True)
    driver = make_driver()
    try:
        login(driver, url, user, password)
        driver.get(f"{url}/dags/router_pipeline")
        _wait(
            lambda: [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"],
            what="Trigger button",
        )[0].click()
        _wait(lambda: driver.find_element(By.ID, "element_source"), what="trigger form")
        time.sleep(2)  # the Monaco editors load after the form
        driver.save_screenshot(str(outputs / "trigger-form-initial.png"))
        shown = _plain(driver.find_element(By.TAG_NAME, "body").text)
        params = {}
        for name, desc in declared.items():
            present = field(driver, name) is not None
            head = " ".join(_plain(desc).split()[:6])
            params[name] = desc if present and head and head in shown else ""
        set_text(driver, "source", source)
        set_text(driver, "sample", sample)
        set_json_editor(driver, "models", models)
        set_json_editor(driver, "judge", judge)
        set_json_editor(driver, "reference_model", None)
        time.sleep(1)
        driver.save_screenshot(str(outputs / "trigger-form.png"))
        buttons = [
            b
            for b in driver.find_elements(By.XPATH, "//*[@role='dialog']//button")
            if b.text.strip() == "Trigger" and b.is_enabled()
        ]
        assert buttons, "no enabled Trigger button in the form (see trigger-form.png)"
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", buttons[-1])
        buttons[-1].click()
        time.sleep(3)
        driver.save_screenshot(str(outputs / "after-trigger.png"))
        runs = requests.get(
            f"{url}/api/v2/dags/router_pipeline/dagRuns",
            params={"order_by": "-start_date", "limit": 5},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()["dag_runs"]
        run = next(r for r in runs if (r.get("conf") or {}).get("sample") == sample)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            state = requests.get(
                f"{url}/api/v2/dags/router_pipeline/dagRuns/{urllib.parse.quote(run['dag_run_id'], safe='')}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ).json()["state"]
            if state in ("success", "failed"):
                break
            time.sleep(5)
        driver.get(f"{url}/dags/router_pipeline/runs/{urllib.parse.quote(run['dag_run_id'], safe='')}")
        time.sleep(5)
        driver.save_screenshot(str(outputs / "run-finished.png"))
        return {"params": params, "run_id": run["dag_run_id"], "shown_text": shown}
    finally:
        driver.quit()
