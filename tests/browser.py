"""A real headless Chromium (the system's package) opening a page, as a user's browser would."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

AUDIO_CHECK = """
const done = arguments[arguments.length - 1];
const players = Array.from(document.querySelectorAll('audio'));
Promise.all(players.map(a => new Promise(resolve => {
  const report = played => resolve({ready: a.readyState, duration: a.duration, error: a.error && a.error.code,
                                    played: played});
  const play = () => a.play().then(() => { a.pause(); report(true); }, e => report(String(e)));
  if (a.readyState >= 1) play(); else { a.addEventListener('loadedmetadata', play);
                                        a.addEventListener('error', () => report(false)); a.load(); }
}))).then(done);
"""


def open_in_chromium(path: str, screenshot: str | None = None) -> dict:
    """Loads ``path``; returns its console errors, each image's decoded width and each audio
    element's state after a play attempt; saves a screenshot of the page's top if asked."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("CI"):
            raise RuntimeError("chromium and chromedriver must be installed (.ci/run installs them)")
        pytest.skip("no chromium/chromedriver here (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1200,1500"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Chromium's profile and temp files in a folder of this call's, removed after: left to
    # themselves they stay in /tmp (an org.chromium.Chromium.* folder after every run)
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as scratch:
        options.add_argument(f"--user-data-dir={scratch}/profile")
        driver = webdriver.Chrome(options=options, service=Service(driver_path, env={**os.environ, "TMPDIR": scratch}))
        return _inspect(driver, path, screenshot)


def _inspect(driver, path: str, screenshot: str | None) -> dict:
    try:
        driver.set_script_timeout(60)
        driver.get(f"file://{os.path.abspath(path)}")
        images = driver.execute_async_script(
            "const done = arguments[0]; const imgs = Array.from(document.images);"
            "Promise.all(imgs.map(i => i.decode().then(() => i.naturalWidth, () => 0))).then(done);")
        audio = driver.execute_async_script(AUDIO_CHECK)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        if screenshot:
            driver.save_screenshot(screenshot)
        return {"errors": errors, "images": images, "audio": audio, "title": driver.title}
    finally:
        driver.quit()
