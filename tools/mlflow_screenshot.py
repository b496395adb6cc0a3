"""A screenshot of MLflow's UI on a finished run, in Debian's chromium (headless):

    python tools/mlflow_screenshot.py --store runs/mlflow.db --experiment "sweep <time>" \
        --out docs/mlflow_ui.png [--page model-metrics --filter val/acc]

Starts ``mlflow ui`` on the store (127.0.0.1, a free port), opens the experiment's best run
(highest val/acc_best) in chromium, waits for its page to render and saves the window."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--page", default="", help="a run tab: '' (overview), model-metrics")
    parser.add_argument("--filter", default="", help="model-metrics: show the charts matching")
    parser.add_argument("--wait", type=float, default=8.0, help="seconds for the page to draw")
    args = parser.parse_args()

    from mlflow import MlflowClient
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    uri = f"sqlite:///{args.store.resolve()}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"no experiment {args.experiment!r} in {args.store}")
    [run] = client.search_runs([experiment.experiment_id], order_by=["metrics.`val/acc_best` DESC"],
                               max_results=1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    server = subprocess.Popen([mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1500,950", "--disable-gpu"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")),
                                   options=options)
        try:
            page = f"/{args.page}" if args.page else ""
            browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/"
                        f"{run.info.run_id}{page}")
            time.sleep(args.wait)
            # the UI opens an assistant side panel: close it, where it has its close button
            for button in browser.find_elements(By.CSS_SELECTOR,
                                                "button[aria-label*='close' i]")[:1]:
                button.click()
                time.sleep(1.0)
            for search in browser.find_elements(By.CSS_SELECTOR,
                                                "input[placeholder*='Search metric']")[:1]:
                if args.filter:
                    search.send_keys(args.filter)
                    time.sleep(3.0)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(args.out))
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.out}: run {run.info.run_name} of {args.experiment}")


if __name__ == "__main__":
    main()
