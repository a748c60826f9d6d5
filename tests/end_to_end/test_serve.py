"""`python -m train.serve` with a model: the API through FastAPI's TestClient, the page in a real
headless browser (Debian's chromium and chromedriver, through Selenium), and the command.

A tiny number-words model (1 encoder and 2 decoder layers, 2 heads, d_model 32) trains
in-process for 120 steps (about 10 s on 2 cores: mostly compiling the step) and is saved as a
workdir: it writes words and ends its outputs, so its translations and alignments have the
shapes of real ones (it is not always right: the tests compare with the library, not with the
task). Every test reuses it.

The browser test skips when chromium or chromedriver is missing, unless
FLAX_TRANSFORMER_REQUIRE_BROWSER=1 (CI sets it): then it fails. Its screenshot goes to
$FLAX_TRANSFORMER_TEST_ARTIFACTS when set, else to the test's tmp_path.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.number_words_model import VOCABULARY, train_params
from train import serve
from train.configs import default as default_config
from train.evaluation import DecodingOptions
from train.setup import model_config_from
from train.translate import (
    AlignmentOptions,
    alignment_links,
    json_line,
    translate_lines_in_detail,
)
from train.workdir import Workdir, load_run

STEPS = 120  # a smaller model than tests/number_words_model.py's, trained less: quick
GREEDY = DecodingOptions(method="greedy")
LIMITS = serve.Limits(max_texts=8, max_request_bytes=2048, max_beam_size=8)
BATCH_SIZE = 4  # few row counts (1, 2, 4): few compilations
TEXTS = ["123", "40712", "5", "999999"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = default_config.get_config()
    config.model.update(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=2)
    config.model.update(d_ff=64, dropout_rate=0.0)
    model_config = model_config_from(config, VOCABULARY.vocab_size)
    params = train_params(model_config, STEPS, warmup=30)
    run = Workdir(tmp_path_factory.mktemp("serve") / "run")
    with run.checkpointer() as checkpointer:
        checkpointer.save_params(STEPS, params, config=run.run_config(config, model_config))
    run.write_config(config, model_config)
    return Path(run.path)


@pytest.fixture(scope="module")
def translator(workdir: Path) -> serve.Translator:
    run = load_run(workdir)
    vocabulary = run.workdir.vocabulary(run.config)
    return serve.Translator(run, vocabulary, defaults=GREEDY, limits=LIMITS, batch_size=BATCH_SIZE)


def batcher_of(translator, decode=None, **settings) -> serve.Batcher:
    settings = dict(batch_size=BATCH_SIZE, max_wait_s=0.005, max_queue=64) | settings
    return serve.Batcher(decode or translator.decode, **settings)


@pytest.fixture(scope="module")
def client(translator):
    with TestClient(serve.create_app(translator, batcher_of(translator))) as test_client:
        yield test_client


def expected_records(translator, texts, options=GREEDY, alignment=None, alignments=False):
    """train.translate's JSON lines of `texts`, from the library directly."""
    selection = None if alignment is None else alignment.decoded_selection(translator.config)
    translations = translate_lines_in_detail(
        translator.run, translator.vocabulary, texts, options, BATCH_SIZE, attention=selection
    )
    records = []
    for index, (text, translation) in enumerate(zip(texts, translations, strict=True)):
        links = None
        if alignments:
            links = alignment_links(
                translation, translator.vocabulary, translator.config, alignment
            )
        records.append(
            json_line(
                index + 1,
                text,
                translation,
                translator.vocabulary,
                translator.config,
                links,
                alignment,
            )
        )
    return json.loads(json.dumps(records))  # as JSON has them (tuples -> lists)


def translations(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert "\n" not in response.text
    return response.json()["translations"]


# ---------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------
def test_translations_are_the_librarys_token_for_token(client, translator) -> None:
    assert translations(client.post("/translate", json={"texts": TEXTS})) == expected_records(
        translator, TEXTS
    )
    (one,) = translations(client.post("/translate", json={"text": " 40712 "}))
    assert one == {**expected_records(translator, ["40712"])[0], "source": " 40712 "}
    assert one["translation"] and one["tokens"][-1] == "</s>"  # the model writes words


# Each (method, attention) compiles its decoder once (seconds): beam search with the selected
# attention, greedy with all of it (as the page asks).
BEAM = {"method": "beam", "beam_size": 3, "length_penalty": 1.0}


@pytest.mark.parametrize(
    ("method", "attention"), [(BEAM, "selected"), ({}, "all")], ids=["beam-selected", "greedy-all"]
)
def test_alignments_and_attention_have_a_row_per_token_and_a_column_per_source_token(
    client, translator, method, attention
) -> None:
    request = {"texts": TEXTS, "alignments": True, "attention": attention, "alignment_head": 1}
    records = translations(client.post("/translate", json={**request, **method}))
    alignment = AlignmentOptions(head=1, attention=attention)
    options = DecodingOptions(**method) if method else GREEDY
    assert records == expected_records(translator, TEXTS, options, alignment, alignments=True)
    assert all(isinstance(record["score"], float) == bool(method) for record in records)
    layers, heads = (1, 1) if attention == "selected" else (2, 2)
    for record in records:
        assert record["attention"]["layers"] == ([1] if attention == "selected" else [0, 1])
        assert record["attention"]["heads"] == ([1] if attention == "selected" else [0, 1])
        weights = np.array(record["attention"]["weights"])
        assert weights.shape == (layers, heads, len(record["tokens"]), len(record["source_tokens"]))
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-4)
        links = [tuple(map(int, pair.split("-"))) for pair in record["alignment"].split()]
        assert links and all(0 <= s < len(record["source_tokens"]) - 1 for s, _ in links)
        assert all(0 <= t < len(record["tokens"]) - 1 for _, t in links)  # eos: never linked
    if attention == "selected":  # the same decoder without the attention in the answer
        request = {"texts": TEXTS, "alignments": True, "alignment_head": 1, **method}
        plain = translations(client.post("/translate", json=request))
        assert [record["alignment"] for record in plain] == [r["alignment"] for r in records]
        assert all("attention" not in record for record in plain)


def test_sampling_with_a_seed_gives_the_same_answer_every_time(client, translator) -> None:
    request = {"texts": TEXTS, "method": "sample", "seed": 7, "temperature": 1.5}
    first = translations(client.post("/translate", json=request))
    options = DecodingOptions(method="sample", seed=7, temperature=1.5)
    assert first == expected_records(translator, TEXTS, options)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # batched among other requests
        answers = list(
            pool.map(
                lambda body: client.post("/translate", json=body),
                [request, {"text": "77"}, request, {"texts": TEXTS, "method": "sample"}],
            )
        )
    assert translations(answers[0]) == first and translations(answers[2]) == first


BAD_REQUESTS = [
    # (body: bytes, or an object sent as JSON), status, the start of the reason
    (b"\xff\xfe", 400, "the request body is not UTF-8 (byte 1 is 0xff: invalid start byte)"),
    (b'{"text": "1",}', 400, "the request body is not JSON (Expecting property name"),
    (b'["123"]', 400, "the request body must be a JSON object"),
    ({}, 422, 'give either "text" (a string) or "texts" (a list of strings)'),
    ({"text": "1", "texts": ["2"]}, 422, 'give either "text"'),
    ({"text": ""}, 422, "text is empty"),
    ({"texts": ["1", " \t"]}, 422, "texts[1] is empty"),
    ({"texts": []}, 422, "texts is empty"),
    ({"texts": ["1"] * 9}, 422, "9 texts, more than --max_texts=8"),
    ({"text": "1" * 70}, 422, "text: '1111111111"),  # the task's own check comes first
    ({"texts": ["1", "12a"]}, 422, "texts[1]: '12a' is not a number written in digits"),
    ({"text": "4\x005"}, 422, "text: contains the control character U+0000 at character 2"),
    ({"text": 123}, 422, "text must be a string, got an integer: 123"),
    ({"texts": ["1", 2]}, 422, "texts must be a list of strings, got a list"),
    ({"text": "1", "speed": "fast"}, 422, "unknown key 'speed'; the keys are text, texts, method"),
    ({"text": "1", "method": "best"}, 422, "decoding method must be one of"),
    ({"text": "1", "beam_size": "4"}, 422, "beam_size must be an integer, got a string: '4'"),
    ({"text": "1", "beam_size": 0}, 422, "beam_size must be >= 1, got 0"),
    ({"text": "1", "beam_size": 9}, 422, "beam_size must be at most --max_beam_size=8, got 9"),
    ({"text": "1", "beam_size": True}, 422, "beam_size must be an integer, got a boolean"),
    ({"text": "1", "temperature": 0}, 422, "temperature must be a positive finite float"),
    ({"text": "1", "top_p": 1.5}, 422, "top_p must be a float in (0, 1]"),
    ({"text": "1", "top_k": 1000}, 422, "top_k must be an int in [0, vocab_size=45]"),
    ({"text": "1", "seed": 2**70}, 422, "seed must be a 64-bit integer"),
    ({"text": "1", "max_length": 0}, 422, "max_length must be in [1, config.max_len=64]"),
    ({"text": "1", "alignments": "yes"}, 422, "alignments must be a boolean"),
    ({"text": "1", "attention": "some"}, 422, "attention must be one of ['none', 'selected'"),
    (
        {"text": "1", "alignments": True, "alignment_layer": 2},
        422,
        "attention layer 2 is out of range: the model has 2 decoder layers",
    ),
    ({"text": "1", "alignment_head": "max"}, 422, "alignment_head must be an integer or 'mean'"),
    ({"text": "1", "alignment_head": 0}, 422, 'alignment_head needs "alignments": true'),
    ({"text": "1", "alignments": True, "alignment_units": "char"}, 422, "alignment units must"),
    (
        b'{"text": "' + b"1" * 3000 + b'"}',
        413,
        "the request body is 3012 bytes, more than --max_request_bytes=2048",
    ),
]


@pytest.mark.parametrize(("body", "status", "reason"), BAD_REQUESTS)
def test_a_bad_request_gets_a_one_line_reason_and_the_server_goes_on(
    client, body, status, reason
) -> None:
    if isinstance(body, bytes):
        response = client.post("/translate", content=body)
    else:
        response = client.post("/translate", json=body)
    assert response.status_code == status, response.text
    assert "\n" not in response.text and list(response.json()) == ["error"]
    assert response.json()["error"].startswith(reason), response.json()["error"]
    assert translations(client.post("/translate", json={"text": "5"}))[0]["translation"]


def test_other_errors_are_one_line_json_too(client) -> None:
    chunked = client.post("/translate", content=iter([b'{"text": "', b"1" * 3000, b'"}']))
    assert chunked.status_code == 413 and "more than --max_request_bytes=2048" in chunked.text
    for response, status, reason in [
        (client.get("/nowhere"), 404, "no such endpoint: /nowhere"),
        (client.get("/translate"), 405, "GET is not allowed on /translate"),
        (client.get("/docs"), 404, "no such endpoint: /docs"),  # its page would load a CDN's
    ]:
        assert (response.status_code, response.json()) == (status, {"error": reason})


def test_health_and_info_describe_the_model(client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["checkpoint"] == f"checkpoint {STEPS}"
    info = client.get("/info").json()
    assert info["model"]["decoder_layers"] == 2 and info["model"]["heads"] == 2
    assert info["limits"]["max_texts"] == 8 and info["limits"]["batch_size"] == BATCH_SIZE
    assert info["defaults"]["method"] == "greedy" and info["defaults"]["alignment_head"] == "mean"


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer(translator) -> None:
    decode_calls = []

    def counting(lines, key, first_batch_index):
        decode_calls.append(len(lines))
        return translator.decode(lines, key, first_batch_index)

    # A long max_wait, so that requests sent together surely meet in the queue.
    batcher = batcher_of(translator, counting, max_wait_s=0.5)
    texts = ["1", "22", "333", "4444"]
    expected = expected_records(translator, texts)
    with TestClient(serve.create_app(translator, batcher)) as test_client:
        start = threading.Barrier(len(texts))

        def ask(text):
            start.wait()
            return test_client.post("/translate", json={"text": text})

        with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
            answers = list(pool.map(ask, texts))
    for answer, record in zip(answers, expected, strict=True):
        assert translations(answer) == [{**record, "line": 1}]
    assert sum(decode_calls) == len(texts) and len(decode_calls) < len(texts), decode_calls


def test_a_full_queue_answers_503_and_serves_again_once_it_drained(translator) -> None:
    busy, release = threading.Event(), threading.Event()

    def held(lines, key, first_batch_index):
        busy.set()
        assert release.wait(30)
        return translator.decode(lines, key, first_batch_index)

    batcher = batcher_of(translator, held, max_queue=1, max_wait_s=0.0)
    with (
        TestClient(serve.create_app(translator, batcher)) as test_client,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        decoding = pool.submit(test_client.post, "/translate", json={"text": "1"})
        assert busy.wait(30)  # the worker holds the first request's line
        queued = pool.submit(test_client.post, "/translate", json={"text": "2"})
        deadline = time.monotonic() + 30
        while batcher.queued_lines < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = test_client.post("/translate", json={"text": "3"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json() == {
            "error": "the server is busy: 1 lines are waiting for the model and this request "
            "brings 1 (--max_queue=1); try again later"
        }
        release.set()
        assert translations(decoding.result(30))[0]["source"] == "1"
        assert translations(queued.result(30))[0]["source"] == "2"
        assert translations(test_client.post("/translate", json={"text": "3"}))


def test_a_failing_decode_is_a_500_and_the_server_goes_on(translator) -> None:
    def failing(lines, key, first_batch_index):
        if "13" in lines:
            raise RuntimeError("the model broke")
        return translator.decode(lines, key, first_batch_index)

    with TestClient(serve.create_app(translator, batcher_of(translator, failing))) as test_client:
        response = test_client.post("/translate", json={"text": "13"})
        assert response.status_code == 500
        assert response.json() == {"error": "internal error: RuntimeError: the model broke"}
        assert translations(test_client.post("/translate", json={"text": "14"}))


# ---------------------------------------------------------------------------------------------
# The page, in a real browser
# ---------------------------------------------------------------------------------------------
def browser_or_skip() -> tuple[str, str]:
    """(chromium, chromedriver) paths; skips without them (fails under CI's
    FLAX_TRANSFORMER_REQUIRE_BROWSER=1)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [
        name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path
    ]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = (
            f"{' and '.join(missing)} not found (apt-get install chromium chromium-driver; "
            "pip install -e '.[dev]')"
        )
        if os.environ.get("FLAX_TRANSFORMER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FLAX_TRANSFORMER_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return chromium, driver


@pytest.fixture
def server_url(translator):
    """The app served by uvicorn on a free localhost port, in a background thread."""
    sock = serve.listening_socket("127.0.0.1", 0)
    server = serve.uvicorn_server(serve.create_app(translator, batcher_of(translator)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture
def browser(monkeypatch):
    chromium, driver_path = browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root, in containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1280,1400",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def heatmap(driver) -> tuple[dict[str, str], list[list[float]]]:
    """The heatmap's data attributes and its cells' values, row by row."""
    table = driver.find_element("id", "heatmap")
    rows = table.find_elements("css selector", "tr.heatmap-row")
    values = []
    for number, row in enumerate(rows):
        assert row.get_attribute("data-row") == str(number)
        values.append(
            [
                float(cell.get_attribute("data-value"))
                for cell in row.find_elements("css selector", "td.heatmap-cell")
            ]
        )
    attributes = {name: table.get_attribute(f"data-{name}") for name in ("layer", "head")}
    return attributes, values


def test_the_page_shows_translation_heatmap_and_alignment(
    browser, server_url, translator, tmp_path
) -> None:
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server_url + "/")
    wait.until(lambda d: d.find_element("id", "status").get_attribute("data-state") == "idle")
    assert len(Select(browser.find_element("id", "head")).options) == 3  # 0, 1, mean
    browser.find_element("id", "source").send_keys("\n".join(TEXTS))  # a sentence a line
    browser.find_element("id", "translate").click()
    wait.until(lambda d: d.find_element("id", "status").get_attribute("data-state") == "done")

    alignment = AlignmentOptions(layer=-1, head="mean", units="piece", attention="all")
    records = expected_records(translator, TEXTS, GREEDY, alignment, alignments=True)
    shown = browser.find_elements("css selector", "#translations .translation .target")
    assert [item.text for item in shown] == [record["translation"] for record in records]
    record = records[0]  # the heatmap shows the first sentence
    attributes, values = heatmap(browser)
    assert attributes == {"layer": "1", "head": "mean"}
    assert len(values) == len(record["tokens"])
    assert all(len(row) == len(record["source_tokens"]) for row in values)
    weights = np.array(record["attention"]["weights"])  # [layers][heads][tokens][source]
    np.testing.assert_allclose(values, weights[1].mean(0), atol=2e-6)
    labels = browser.find_elements("css selector", "#heatmap tbody th.target-token")
    assert [label.text for label in labels] == record["tokens"]
    columns = browser.find_elements("css selector", "#heatmap thead th.source-token")
    assert len(columns) == len(record["source_tokens"])
    links = browser.find_elements("css selector", "#alignment line.alignment-link")
    drawn = sorted(
        f"{line.get_attribute('data-source')}-{line.get_attribute('data-target')}" for line in links
    )
    assert drawn == sorted(record["alignment"].split()) and drawn

    Select(browser.find_element("id", "head")).select_by_value("0")
    wait.until(lambda d: d.find_element("id", "heatmap").get_attribute("data-head") == "0")
    wait.until(lambda d: d.find_element("id", "status").get_attribute("data-state") == "done")
    head_0 = heatmap(browser)[1]
    np.testing.assert_allclose(head_0, weights[1][0], atol=2e-6)
    assert not np.allclose(head_0, values, atol=1e-3)  # another head, other weights
    browser.find_elements("css selector", "#translations .translation")[1].click()
    wait.until(lambda d: d.find_element("id", "heatmap").get_attribute("data-sentence") == "1")
    rows = heatmap(browser)[1]
    assert len(rows) == len(records[1]["tokens"])
    np.testing.assert_allclose(rows, np.array(records[1]["attention"]["weights"])[1][0], atol=2e-6)

    # Everything the page loaded came from the server itself (no CDN, no web font).
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    assert resources and all(url.startswith(server_url) for url in resources), resources
    artifacts = Path(os.environ.get("FLAX_TRANSFORMER_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(artifacts / "serve_page.png"))


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def test_the_command_serves_until_ctrl_c(workdir: Path) -> None:
    command = [sys.executable, "-m", "train.serve", f"--workdir={workdir}", "--port=0"]
    flags = ["--decoding=greedy", "--batch_size=1", "--compilation_cache="]
    process = subprocess.Popen(
        [*command, *flags],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "(Ctrl-C to stop)" in line:
                break
        assert lines and "(Ctrl-C to stop)" in lines[-1], lines
        assert any(
            line.startswith("compiled greedy for batches of 1 rows of 16 tokens in ")
            for line in lines
        ), lines
        url = re.search(r"on (http://127\.0\.0\.1:\d+/) ", lines[-1]).group(1)
        with urllib.request.urlopen(url + "health", timeout=30) as response:
            assert json.load(response)["checkpoint"] == f"checkpoint {STEPS}"
        request = urllib.request.Request(url + "translate", data=b'{"text": "12"}')
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["translations"][0]["source"] == "12"
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(60) == 0, rest
        assert rest.splitlines()[-1] == "stopped" and "Traceback" not in rest, rest
    finally:
        process.kill()
        process.wait()
