"""The user guide: README's links resolve, every regbench command the guide shows composes and passes
validation, and (integration) `mkdocs build --strict` builds the site."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from regbench.cli import SUBCOMMANDS, _subcommand_parser
from regbench.preflight import allow_new_keys, check_command_line, check_words
from test_report_browser import browser  # noqa: F401  (the headless Chromium fixture)

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "results" not in p.parts)]
PLACEHOLDER = re.compile(r"<[^>]+>|\.\.\.|\bPATH\b|\bSWEEP|\bOUTDIR\b|\$|\[[A-Z-]")


def guide_commands() -> list[tuple[str, str, str | None]]:
    """(page, command, folder) for every `regbench ...` line in the guide's bash blocks, with the block's
    shell variables (`C="..."`, `for seed in 0 1; do`) filled in; `folder` is where the command imports a
    user's code from: a `cd DIR` or `export PYTHONPATH=DIR` earlier in the block, or a `PYTHONPATH=DIR` in front (from the checkout's
    root, where README says to run), else None."""
    found = []
    for page in PAGES:
        fence, variables, folder = None, {}, None
        # a command continued over lines (`... \` then the rest) is one command
        lines = re.sub(r"\\\n\s*", "", page.read_text()).splitlines()
        for line in lines:
            if line.startswith("```"):
                fence = line[3:].strip() if fence is None else None
                variables, folder = {}, None
                continue
            if fence != "bash":
                continue
            if m := re.match(r'^\s*(\w+)="([^"]*)"\s*$', line):
                variables[m[1]] = m[2]
            if m := re.match(r"^\s*for (\w+) in (\S+)", line):
                variables[m[1]] = m[2]
            if m := re.match(r"^\s*cd (\S+)", line) or re.match(r"^\s*export .*\bPYTHONPATH=(\S+)", line):
                folder = m[1]
            for name, value in variables.items():
                line = line.replace("${" + name + "}", value).replace("$" + name, value)
            command = line.split(" #")[0].strip()
            path = re.match(r"^(?:\w+=\S+\s+)*PYTHONPATH=(\S+)", command)
            command = re.sub(r"^(\w+=\S+\s+)+", "", command)  # REGBENCH_DATA=... in front
            if command.startswith("regbench "):
                found.append((str(page.relative_to(ROOT)), command, path[1] if path else folder))
    return found


COMMANDS = guide_commands()


def test_the_guide_has_commands_to_check():
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("page,command,folder", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c, _ in COMMANDS])
def test_every_command_in_the_guide_is_valid(page, command, folder, monkeypatch):
    """Each command as written, from the checkout's root: a user's model is importable only where the
    guide says how (`cd examples`, PYTHONPATH=examples); until 2026-12-05 README's tour line was not."""
    monkeypatch.chdir(ROOT / (folder or "."))
    monkeypatch.syspath_prepend(str(ROOT / (folder or ".")))  # what cli.main adds: the folder it runs from
    for name in ("my_model", "my_task", "my_regularizer", "my_optim"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    args = shlex.split(command)[1:]
    if args and args[0] == "tune":
        from regbench.tune import split_command_line
        from regbench.tune_space import plans, tune_config

        runs, tune = split_command_line(args[1:])
        plans(runs, tune_config(tune), machine=False)
        return
    if args and args[0] in ("compare", "report", "ensemble", "export"):
        _subcommand_parser().parse_args(args)  # the options exist and parse
        return
    if PLACEHOLDER.search(command):
        pytest.skip("has a placeholder for the reader to fill in")
    check_words(args, SUBCOMMANDS)  # no key given twice, no stray word: what the command itself checks first
    if any(a.startswith(("--cfg", "--help", "--info", "--version", "-c")) for a in args):
        return
    check_command_line(allow_new_keys(args), machine=False)


def test_readme_links_point_at_files_that_exist():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target


@pytest.mark.integration
def test_mkdocs_builds_the_site_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").is_file()


@pytest.fixture
def site(tmp_path):
    """The built site, served over HTTP from a thread (search runs in a web worker, which file:// blocks)."""
    import functools
    import http.server
    import threading

    pytest.importorskip("mkdocs")
    out = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(out)], cwd=ROOT, check=True,
                   timeout=300, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.integration
def test_the_site_renders_in_a_browser_and_search_finds_pages(site, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    def open_page(path: str) -> None:
        browser.get(f"{site}/{path}")  # may return while the page is still loading: wait until it has loaded
        WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.readyState") == "complete")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, (path, errors)

    open_page("")
    nav = [a.get_attribute("textContent").strip() for a in browser.find_elements(By.CSS_SELECTOR, "nav.md-nav a")]
    for title in ("Getting started", "Configuration reference", "Trackers", "Development"):
        assert title in nav, nav
    assert browser.find_elements(By.CSS_SELECTOR, "pre code") and browser.find_elements(By.CSS_SELECTOR, "table")
    browser.save_screenshot(str(tmp_path / "home.png"))

    open_page("reference/configuration/")
    rows = browser.find_elements(By.CSS_SELECTOR, "article table tbody tr")
    assert len(rows) > 150 and "optimizer.lr" in browser.find_element(By.TAG_NAME, "article").text
    browser.save_screenshot(str(tmp_path / "reference.png"))

    open_page("compare/")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0])")
    assert len(images) >= 2 and all(ok for _, ok in images), images
    browser.save_screenshot(str(tmp_path / "compare.png"))

    box = WebDriverWait(browser, 10).until(ready.element_to_be_clickable((By.CSS_SELECTOR, "input.md-search__input")))
    box.click()
    box.send_keys("ensemble")
    WebDriverWait(browser, 20).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, ".md-search-result__item"))
    titles = " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item"))
    assert "ensemble" in titles.lower()


IMAGES = ["data.train_eval_size=20", "data.limit_eval=null", "trainer.max_epochs=1", "trainer.batch_size=16",
          "trainer.eval_batch_size=32"]
TAGGING = ["trainer.max_epochs=1", "trainer.batch_size=8"]
SMOKE = {  # what makes a guide command's first configuration take seconds on the tiny datasets (DATA: where)
    "cifar10": ["data.val_size=20", *IMAGES],
    "imagefolder": ["data.dir={data}/flowers", *IMAGES],
    "conll2003": TAGGING,
    "conll2000": [*TAGGING, "data.val_size=20"],
    "conll": [*TAGGING, "data.dir={data}/conll2003"],
    "movielens": ["trainer.max_epochs=1", "trainer.batch_size=64"],
}
SMALL_MODEL = {"cnn13": ["model.width=0.0625"], "bilstm": ["model.hidden=16", "model.word_dim=16",
                                                             "model.char_hidden=8", "model.char_dim=8"]}


def first_configuration(args: list[str]) -> list[str] | None:
    """The overrides of the first job a command makes (the first value of each swept key), without
    launcher settings; None for what is not one training configuration (a search, an experiment preset)."""
    out = []
    for arg in args:
        if arg in ("-m", "--multirun") or arg.startswith(("hydra/", "hydra.")):
            continue
        if arg.startswith(("experiment=", "-")) or "interval(" in arg or "choice(" in arg:
            return None
        key, _, value = arg.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


@pytest.mark.integration
def test_every_run_command_in_the_guide_trains_at_smoke_scale(tiny_study_data, tmp_path, monkeypatch):
    """The first configuration of every run or grid command in the guide, trained for real (one epoch on
    the tiny datasets, whatever size the command asks for; a folder the command names is replaced by a
    tiny one in the same format)."""
    from regbench import runner
    from regbench.preflight import compose_config
    from regbench.validation import validate

    from test_image_tasks import write_folder

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    (tiny_study_data / "conll2000").mkdir()  # CoNLL-2000 ships train and test only: validation is carved
    for split in ("train", "test"):
        (tiny_study_data / "conll2000" / f"{split}.txt").write_text(
            (tiny_study_data / "conll2003" / f"{split}.txt").read_text())
    write_folder(tiny_study_data / "flowers", {"train": 12, "test": 6})
    ran, seen = [], set()
    for page, command, _ in COMMANDS:
        args = shlex.split(command)[1:]
        if not args or args[0] in ("compare", "report", "ensemble", "export", "tune") or PLACEHOLDER.search(command):
            continue
        overrides = first_configuration(allow_new_keys(args))
        if overrides is None or tuple(overrides) in seen:
            continue
        seen.add(tuple(overrides))
        composed = compose_config(overrides)
        task, model = composed.task.name, composed.model.name
        if task not in SMOKE:
            continue
        run_dir = tmp_path / f"run{len(ran)}"
        smoke = [*(o.format(data=tiny_study_data) for o in SMOKE[task]), *SMALL_MODEL.get(model, []), "trainer.device=cpu", "trainer.progress=false",
                 "trainer.compile=false", "trainer.resume=false", f"paths.data_dir={tiny_study_data}",
                 f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'outputs'}"]
        cfg = compose_config(overrides + smoke)
        validate(cfg)
        record = runner.run(cfg, run_dir)
        assert record["status"] in ("completed", "diverged"), (page, command, record.get("error"))
        ran.append(command)
    assert len(ran) >= 18, ran


def test_the_development_map_names_every_module():
    """docs/development.md is where a newcomer finds where a change belongs: a module it does not name is
    one they cannot find (the map fell behind once: runs.py, tables.py, budget.py were missing)."""
    text = (ROOT / "docs" / "development.md").read_text()
    modules = [p.relative_to(ROOT / "regbench") for p in (ROOT / "regbench").rglob("*.py")]
    missing = [str(m) for m in modules if m.name not in ("__init__.py", "__main__.py") and m.name not in text]
    assert not missing, f"docs/development.md does not name {missing}"
