"""The HTML report in a real browser: headless Chromium (Debian's, driven by Playwright) loads a
run's report — it renders, every chart decodes, nothing is logged to the console."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest
from test_method import fake_probe, fake_trainer, fold, seed_samples, settings, start

from looptool.app.report import write_report
from looptool.kernel.testing import StubBus, StubRunner
from looptool.loop.events import DatasetReady, EvalCompleted, ModelReady, TrainProgress
from looptool.services import curator, expander, judge

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: scripts/install.sh installs Debian's where apt can")
def test_the_report_renders_in_chromium_with_its_charts_and_no_console_errors(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    async def main() -> StubBus:
        bus = StubBus()
        runner = StubRunner(bus, settings(), curator.service, fake_trainer, fake_probe, judge.service, expander.service)
        await start(bus, seed_samples(), rounds=2)
        await runner.run_until_idle()
        for ready in bus.of_type(ModelReady):  # what the trainer and evaluator add to a real run
            await bus.publish(
                TrainProgress(run="r", round=ready.round, step=1, total_steps=1, loss=0.5 / (1 + ready.round))
            )
            metrics = {"overall": 0.3 + 0.1 * ready.round, "simple": 0.5, "parallel": 0.1 * ready.round}
            await bus.publish(EvalCompleted(run="r", round=ready.round, model=ready.model, metrics=metrics, n_items=20))
        await bus.publish(EvalCompleted(run="r", round=0, model="policy", metrics={"overall": 0.05}, n_items=20))
        return bus

    bus = anyio.run(main)
    assert len(bus.of_type(DatasetReady)) == 2
    page_path, _ = write_report(fold(bus), tmp_path)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"page error: {error}"))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0, i.naturalWidth])"
            )
            headings = page.evaluate("Array.from(document.querySelectorAll('h1, h2')).map(h => h.textContent)")
            text = page.inner_text("body")
        finally:
            browser.close()

    assert console == []
    charts = {alt: (decoded, width) for alt, decoded, width in images}
    assert set(charts) == {"accuracy per round", "composition", "verdicts", "loss"}
    assert all(decoded and width > 300 for decoded, width in charts.values()), charts
    assert headings[:2] == ["LoopTool run r", "Held-out accuracy"] and "Training loss" in headings
    assert "Judge decisions" in headings and "0.400" in text  # round 1's overall, in the table
