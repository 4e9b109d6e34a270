"""The review page driven in a real headless browser (Debian's chromium and chromedriver,
through selenium) against a real ``vfinfer serve --cases --token-file``: open a case,
correct it, save; the saved result, report and audit trail say so. Skips, saying why, where
chromium, chromedriver or selenium is missing (``.ci/run`` installs them).

Set ``VFINFER_SCREENSHOTS=DIR`` to keep the page's screenshots and the report's printed pages
there for a person to look at."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from vfinfer.cli import main
from vfinfer.model.manifest import demo_model_dir

from serving import Server

pytest.importorskip("fastapi", reason="the serve extra is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install -e '.[dev]')")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as until  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRISOMY = "syn9002-47XY+21-0"
TOKEN = "browser-token-0123456789"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, cases directory): the trisomy example run with --keep-images, served."""
    root = tmp_path_factory.mktemp("review")
    cases = root / "cases"
    ran = CliRunner().invoke(main, ["run", str(EXAMPLES / TRISOMY), "--out", str(cases),
                                    "--keep-images", "--threads", "1"])
    assert ran.exit_code == 0, ran.output
    (root / "tokens").write_text(f"alice {TOKEN}\n")
    server = Server(demo_model_dir(), "--cases", cases, "--token-file", root / "tokens")
    yield server, cases
    assert server.stop() == 0, "".join(server.output)


def shots(tmp_path):
    folder = Path(os.environ.get("VFINFER_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def clicked(browser, selector):
    """Click the element if it is there: the case list is drawn again when the token changes,
    so an element found a moment ago may be gone (the wait tries again)."""
    try:
        browser.find_element(By.CSS_SELECTOR, selector).click()
    except (NoSuchElementException, StaleElementReferenceException):
        return False
    return True


def open_case(browser, url, name):
    browser.get(f"{url}/review")
    wait = WebDriverWait(browser, 60)
    # typed as a person would, set at once (the page keeps both fields from the last visit)
    browser.execute_script(
        "document.getElementById('reviewer').value = arguments[0];"
        "const token = document.getElementById('token'); token.value = arguments[1];"
        "token.dispatchEvent(new Event('change'));", "Dr. Browser", TOKEN)
    wait.until(lambda b: clicked(b, f"button[data-case='{name}']"), page_said(browser))
    wait.until(until.presence_of_element_located((By.ID, "type-0")), page_said(browser))
    wait.until(lambda b: b.execute_script(
        "return document.getElementById('karyogram').naturalWidth") > 0, page_said(browser))
    return wait


class page_said:  # noqa: N801 (a message that reads the page when the wait fails)
    def __init__(self, browser):
        self.browser = browser

    def __str__(self):
        return f"the page said: {self.browser.find_element(By.ID, 'status').text!r}"


def test_a_correction_made_in_the_browser_is_saved(browser, served, tmp_path):
    server, cases = served
    result = json.loads((cases / TRISOMY / "result.json").read_text())
    extra = [i for i, c in enumerate(result["chromosomes"]) if c["type"] == "21"][0]
    wait = open_case(browser, server.url, TRISOMY)
    assert browser.find_element(By.ID, "karyotype").text == "47,XY,+21"
    folder = shots(tmp_path)
    browser.save_screenshot(str(folder / "review-opened.png"))

    browser.find_element(By.ID, f"deleted-{extra}").click()
    Select(browser.find_element(By.ID, "polarity-0")).select_by_value("q-arm up")
    assert "removed" in browser.find_element(By.ID, f"row-{extra}").get_attribute("class")
    browser.find_element(By.ID, "save").click()
    wait.until(until.text_to_be_present_in_element((By.ID, "status"), "saved revision 1"))
    assert browser.find_element(By.ID, "karyotype").text == "46,XY"
    assert "Dr. Browser" in browser.find_element(By.ID, "audit").text
    browser.save_screenshot(str(folder / "review-saved.png"))

    reviewed = json.loads((cases / TRISOMY / "review" / "result.json").read_text())
    assert reviewed["karyotype"] == "46,XY" and reviewed["review"]["revision"] == 1
    assert reviewed["chromosomes"][0]["polarity"] == "q-arm up"
    audit = json.loads((cases / TRISOMY / "review" / "audit.jsonl").read_text())
    assert (audit["reviewer"], audit["token"]) == ("Dr. Browser", "alice")
    assert {(c["index"], c["field"]) for c in audit["changes"]} == {(extra, "deleted"),
                                                                     (0, "polarity")}
    report = (cases / TRISOMY / "review" / "report.html").read_text()
    assert "46,XY" in report and "Dr. Browser" in report
    assert json.loads((cases / TRISOMY / "result.json").read_text()) == result


def test_the_reviewed_report_prints_on_two_pages_at_most(served, tmp_path):
    if CHROMIUM is None or shutil.which("pdfinfo") is None:
        pytest.skip("chromium or poppler-utils (pdfinfo) is not installed")
    _, cases = served
    report = cases / TRISOMY / "review" / "report.html"
    if not report.exists():
        pytest.skip("the browser test did not save a review")
    pdf = shots(tmp_path) / "report-reviewed.pdf"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--no-pdf-header-footer", f"--print-to-pdf={pdf}", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True,
                          text=True).stdout
    pages = int(next(line.split()[-1] for line in info.splitlines()
                     if line.startswith("Pages:")))
    assert 1 <= pages <= 2


def test_a_case_uploaded_on_the_page_opens(browser, served, tmp_path):
    server, cases = served
    open_case(browser, server.url, TRISOMY)
    files = sorted((EXAMPLES / TRISOMY).glob("*.png"))
    browser.find_element(By.ID, "upload-name").send_keys("from-the-page")
    browser.find_element(By.ID, "upload-files").send_keys("\n".join(map(str, files)))
    browser.find_element(By.ID, "upload-button").click()
    WebDriverWait(browser, 60).until(
        until.text_to_be_present_in_element((By.ID, "status"), "classified and kept"))
    assert browser.find_element(By.ID, "case-name").text == "from-the-page"
    assert browser.find_element(By.ID, "karyotype").text == "47,XY,+21"
    assert len(list((cases / "from-the-page" / "images").glob("*.png"))) == 47
    browser.save_screenshot(str(shots(tmp_path) / "review-uploaded.png"))
