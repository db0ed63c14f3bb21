"""Session fixtures: a tiny Llama with a locally trained tokenizer, fine-tuned (real TRL SFTTrainer) until most
of 32 KJV windows are memorized, plus 32 windows it never saw; the CLI in and out of process. Nothing is
downloaded."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import (COMMAND_ARGS, KILLED_ARGS, PREFIX, SUFFIX, invoke_cli, lora_setup, memorizing_setup,  # noqa: E402
                     predictor_inputs, run_cli)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tokenizer, base model, memorizing model and data (about a minute on 2 cores; see
    `helpers.memorizing_setup`). EVALMEM_TEST_CACHE=DIR builds them once into DIR for later sessions."""
    cache = os.environ.get("EVALMEM_TEST_CACHE")
    return memorizing_setup(Path(cache) if cache else tmp_path_factory.mktemp("tiny"), PREFIX + SUFFIX)


@pytest.fixture(scope="session")
def lora(tiny, tmp_path_factory):
    """LoRA adapters on the memorizing model, one trained to memorize windows it does not (`helpers.lora_setup`);
    built into EVALMEM_TEST_CACHE/lora when that is set."""
    cache = os.environ.get("EVALMEM_TEST_CACHE")
    return lora_setup(tiny, Path(cache) / "lora" if cache else tmp_path_factory.mktemp("lora"))


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def invoke():
    return invoke_cli


@pytest.fixture
def predictor_data(tmp_path):
    """Synthetic features and labels of a data file for `evalmem predict` and `filter` (`helpers.predictor_inputs`)."""
    return predictor_inputs(tmp_path)


@pytest.fixture(scope="session")
def tiny_runs(tiny, tmp_path_factory):
    """Real `evalmem extract --engine hf` runs of the tiny memorizing model and its base on `tiny.data`."""
    root = tmp_path_factory.mktemp("tiny_runs")
    runs = SimpleNamespace(model=str(root / "model"), base=str(root / "base"))
    for model, out in ((tiny.model, runs.model), (tiny.base, runs.base)):
        invoke_cli("extract", "--model", model, "--data", tiny.data, "--engine", "hf", "--out", out)
    return runs


@pytest.fixture(scope="session")
def uninterrupted(tiny, tmp_path_factory):
    """Each command's run of the kill tests' job, start to end (in process)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    for command, args in COMMAND_ARGS.items():
        invoke_cli(command, "--model", tiny.model, "--data", tiny.data, *KILLED_ARGS, *args, "--out", root / command)
    return root


@pytest.fixture(scope="module")  # its event loop must not outlive the module: other tests run asyncio
def browser():
    """Headless Chromium (the system's, driven by Playwright; nothing downloaded). Skipped where there is none,
    unless EVALMEM_REQUIRE_BROWSER is set (scripts/test.sh, where Chromium is installed): then it fails them."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = ("no chromium on PATH (Debian: apt-get install chromium)" if not chromium else
               "playwright is not installed (the dev extra; never `playwright install`)" if not sync_playwright else "")
    if missing:
        (pytest.fail if os.environ.get("EVALMEM_REQUIRE_BROWSER") else pytest.skip)(missing)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """open_page(path, hash="") -> a Playwright Page on that file; the test fails on any dialog, page error,
    console error or request leaving the page."""
    problems, pages = [], []

    def open_(path, hash_=""):
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("request", lambda r: r.url.startswith(("file:", "data:")) or problems.append(f"request: {r.url}"))
        page.goto(Path(path).as_uri() + hash_)
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()
    assert not problems
