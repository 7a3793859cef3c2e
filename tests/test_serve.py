"""`textlora serve` as a real process on a free loopback port: API, limits, micro-batching, the page in Chromium."""

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from textlora.cli import main  # noqa: E402
from textlora.commands.predict import classify  # noqa: E402

NAMES = ["World", "Sports", "Business", "Sci/Tech"]
TEXTS = ["Stocks fell on Wall Street as oil prices rose", "The team won the cup after extra time",
         "NASA launches a new probe to Mars"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(model_dir, *flags, log_path):
    """Start `textlora serve` as a subprocess, wait for /health, yield its URL, stop it."""
    port = _free_port()
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "textlora.cli", "serve", str(model_dir), "--port", str(port),
                                "--device", "cpu", "--log-level", "warning", *flags],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{Path(log_path).read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after 120 s:\n{Path(log_path).read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    # Small limits so that going over them is cheap; a long window so concurrent requests surely meet.
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(tiny_run, "--max-texts", "8", "--max-chars", "200", "--max-batch", "32",
                        "--max-wait-ms", "100", log_path=log) as url:
        yield url
    assert "Traceback" not in log.read_text()  # bad requests never crashed anything


def _post(url, payload=None, **kwargs):
    return httpx.post(f"{url}/v1/classify", json=payload, timeout=30, **kwargs)


def test_classify_returns_the_runs_predictions(server, tiny_run, capsys):
    response = _post(server, {"texts": TEXTS})
    assert response.status_code == 200
    results = response.json()["results"]
    expected = classify(tiny_run, TEXTS, as_json=True, device="cpu")  # textlora classify, in-process
    capsys.readouterr()
    assert len(results) == len(TEXTS)
    for got, want in zip(results, expected):
        assert list(got["probabilities"]) == NAMES
        assert sum(got["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert got["label"] == NAMES[got["label_id"]] == max(got["probabilities"], key=got["probabilities"].get)
        assert got["label"] == want["label"]
        for name in NAMES:
            assert got["probabilities"][name] == pytest.approx(want["probabilities"][name], abs=1e-5)


@pytest.mark.parametrize("payload, expected", [
    ({"texts": ["x"] * 9}, "9 texts in one request; the limit is 8"),
    ({"texts": ["fine", "y" * 201]}, "texts[1] has 201 characters; the limit is 200"),
])
def test_over_limit_requests_get_413_with_a_clear_message(server, payload, expected):
    response = _post(server, payload)
    assert response.status_code == 413 and expected in response.json()["detail"]


def test_an_oversized_body_is_refused_before_it_is_parsed(server):
    body = json.dumps({"texts": ["z" * 150] * 200})  # 8 x (200 x 12 + 64) + 4096 = 23,808 bytes allowed
    response = httpx.post(f"{server}/v1/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit of 23,808" in response.json()["detail"]


def test_a_chunked_body_is_refused_while_it_arrives(server):
    # Chunked transfer declares no length: the server must count while reading and stop at the limit. The
    # body sent here never ends, so a server that read it whole before answering would never answer.
    host, port = server.removeprefix("http://").split(":")
    chunk = b'"' + b"z" * 4000 + b'", '
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (11, b'{"texts": ['))
        for _ in range(6):  # 24,035 bytes, just over the 23,808 allowed (no more: the server stops reading)
            connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = b""
        while b"}" not in answer:  # the JSON body of the answer
            data = connection.recv(65536)
            assert data, answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 413") and b"request body is over the limit of 23,808 bytes" in answer
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_texts_within_the_documented_limits_are_accepted_in_any_json_escaping(server):
    # 8 texts of 200 emoji (the limits): json.dumps escapes each as a surrogate pair, 12 bytes a character.
    body = json.dumps({"texts": ["\U0001F600" * 200] * 8})
    assert len(body) > 8 * 200 * 12
    response = httpx.post(f"{server}/v1/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 8


def test_a_lone_surrogate_is_a_422_naming_the_text(server):
    before = httpx.get(f"{server}/v1/stats").json()
    response = httpx.post(f"{server}/v1/classify", content=b'{"texts": ["fine", "bad \\ud800 text"]}',
                          headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "texts[1] holds U+D800 at character 4, a lone surrogate" in response.json()["detail"]
    assert httpx.get(f"{server}/v1/stats").json()["errors"] == before["errors"]  # not an internal error


@pytest.mark.parametrize("body", [
    b'{"texts": ["unterminated',
    b"not json at all",
    b'{"texts": "one string, not a list"}',
    b'{"texts": [1, 2]}',
    b'{"texts": [null]}',
    b'{"texts": []}',
    b'{"text": ["wrong key"]}',
    b'{"texts": ["ok"], "extra": 1}',
    b'[]',
])
def test_malformed_requests_get_422_and_the_server_lives_on(server, body):
    response = httpx.post(f"{server}/v1/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_concurrent_requests_are_micro_batched(server):
    before = httpx.get(f"{server}/v1/stats").json()

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{server}/v1/classify", json={"texts": [text, text + " x"]})
                                          for text in TEXTS * 4))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 12
    assert all(len(r.json()["results"]) == 2 for r in responses)
    after = httpx.get(f"{server}/v1/stats").json()
    assert after["requests"] - before["requests"] == 12
    assert after["texts"] - before["texts"] == 24
    calls = after["model_calls"] - before["model_calls"]
    assert 1 <= calls < 12, after  # 12 concurrent requests ran in fewer model calls
    assert after["largest_batch"] > 2


def test_model_info_health_and_openapi(server, tiny_run):
    info = httpx.get(f"{server}/v1/model").json()
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert info["source"] == "run" and info["labels"] == NAMES
    assert info["trainable_params"] == summary["trainable_params"] == 1156
    assert info["metrics"]["validation_accuracy"] == summary["validation_accuracy"]
    assert info["base_model"].endswith("tiny-bert0") and info["max_length"] == 48
    assert info["limits"]["max_texts"] == 8 and info["limits"]["max_chars"] == 200

    assert httpx.get(f"{server}/health").json()["labels"] == NAMES
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/classify", "/v1/model", "/v1/stats", "/health"} <= set(schema["paths"])
    assert "ClassifyRequest" in schema["components"]["schemas"]
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and 'id="classify"' in page.text and "://" not in page.text  # no CDN: works offline


def test_serving_an_exported_folder_gives_the_same_probabilities(server, tiny_run, tmp_path):
    out = tmp_path / "export"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    from_run = _post(server, {"texts": TEXTS}).json()["results"]
    with running_server(out, log_path=tmp_path / "export.log") as url:
        from_export = _post(url, {"texts": TEXTS}).json()["results"]
        info = httpx.get(f"{url}/v1/model").json()
    assert info["source"] == "export" and info["labels"] == NAMES and info["trainable_params"] == 1156
    # The export carries the run's precision setting: both compute alike (bf16 on a CPU with AMX, else fp32).
    assert info["precision"] == httpx.get(f"{server}/v1/model").json()["precision"]
    # The run keeps its frozen base in model.base_dtype (bf16 on CPUs with native bf16) with LoRA beside it; the
    # export is merged in fp32. They agree to the base's rounding, and exactly where both are fp32.
    same_dtype = json.loads((tiny_run / "summary.json").read_text())["base_dtype"] == "fp32"
    for a, b in zip(from_run, from_export):
        assert a["label"] == b["label"]
        for name in NAMES:
            assert a["probabilities"][name] == pytest.approx(b["probabilities"][name], abs=1e-5 if same_dtype else 2e-3)


def test_onnx_runtime_serves_the_same_probabilities_as_pytorch(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from textlora.errors import RunFolderError
    from textlora.serve.classifier import load_classifier

    out = tmp_path / "export"
    assert main(["export", str(tiny_run), "--out", str(out), "--onnx"]) == 0
    texts = TEXTS * 5 + ["a much longer text " * 20]  # several length-sorted batches of 4
    onnx = load_classifier(out, "cpu", batch_size=4, onnx=True)
    torch_probs = load_classifier(out, "cpu", batch_size=4, precision="fp32").predict(texts)  # the graph's precision
    onnx_probs = onnx.predict(texts)
    assert onnx.info["runtime"] == "onnxruntime" and onnx.info["precision"] == "fp32"
    assert onnx_probs.shape == (len(texts), 4)
    assert abs(onnx_probs - torch_probs).max() < 1e-5
    # A text no tokenizer takes is refused before the model runs, on ONNX Runtime as on PyTorch.
    from textlora.serve.app import create_app

    async def post_lone_surrogate():
        transport = httpx.ASGITransport(app=create_app(onnx))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/classify", content=b'{"texts": ["\\udfff"]}',
                                     headers={"content-type": "application/json"})

    response = asyncio.run(post_lone_surrogate())
    assert response.status_code == 422 and "texts[0] holds U+DFFF" in response.json()["detail"]
    with pytest.raises(RunFolderError, match="is a run folder"):
        load_classifier(tiny_run, onnx=True)
    (out / "model.onnx").unlink()
    with pytest.raises(RunFolderError, match="has no model.onnx"):
        load_classifier(out, onnx=True)


def test_max_length_serves_longer_texts_in_full_from_a_run_and_its_onnx_export(tiny_run, tmp_path):
    # tiny_run trained at max_length 48; the tiny BERT's positions reach 128.
    pytest.importorskip("onnxruntime")
    from textlora.errors import ConfigError
    from textlora.serve.classifier import load_classifier

    out = tmp_path / "export"
    assert main(["export", str(tiny_run), "--out", str(out), "--onnx"]) == 0
    texts = [" ".join(TEXTS * 4)]  # past 48 tokens, within 128
    own = load_classifier(tiny_run, "cpu", precision="fp32")
    longer = load_classifier(tiny_run, "cpu", precision="fp32", max_length=128)
    onnx = load_classifier(out, "cpu", onnx=True, max_length=128)
    assert (own.info["max_length"], longer.info["max_length"], onnx.info["max_length"]) == (48, 128, 128)
    # The end of the text is read: other inputs, other outputs (one text, one path: equal inputs are bit-equal).
    assert (longer.predict(texts) != own.predict(texts)).any()
    assert abs(onnx.predict(texts) - longer.predict(texts)).max() < 1e-5
    with pytest.raises(ConfigError, match="--max-length=1000 is longer than"):
        load_classifier(out, "cpu", onnx=True, max_length=1000)


def test_serve_refuses_a_taken_or_impossible_port_an_unknown_host_and_a_folder_that_is_no_model(tiny_run, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_run), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", str(_free_port())]) == 2
    assert "neither a textlora run folder" in capsys.readouterr().err
    assert main(["serve", str(tiny_run), "--max-texts", "0"]) == 2
    assert "--max-texts must be at least 1" in capsys.readouterr().err
    for port in ("99999", "-1"):  # socket's own error for these is an OverflowError traceback
        assert main(["serve", str(tiny_run), "--port", port]) == 2
        assert f"--port {port} is not a TCP port; give one from 1 to 65535" in capsys.readouterr().err
    # An address of no interface here (TEST-NET-1: never assigned), so no name lookup leaves the machine.
    assert main(["serve", str(tiny_run), "--host", "192.0.2.1", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on --host 192.0.2.1" in err and "--port" not in err


def test_the_page_in_headless_chromium(server, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) for the browser test")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('Sci/Tech')")
            page.fill("#text", TEXTS[0])
            page.click("#classify")
            page.wait_for_selector("#result:not([hidden])", timeout=30_000)
            bars = {row.get_attribute("data-label"): float(row.get_attribute("data-probability"))
                    for row in page.query_selector_all("#bars .bar")}
            label = page.inner_text("#label")
            top = page.get_attribute("#bars .bar.top", "data-label")
            width = page.eval_on_selector("#bars .bar.top .fill", "el => el.style.width")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

            # An over-limit text shows the server's message instead of a result.
            page.evaluate("document.getElementById('text').removeAttribute('maxlength')")
            page.fill("#text", "w" * 250)
            page.click("#classify")
            page.wait_for_selector("#error:not([hidden])")
            error = page.inner_text("#error")
        finally:
            browser.close()
    assert list(bars) == NAMES and sum(bars.values()) == pytest.approx(1, abs=1e-3)
    expected = _post(server, {"texts": [TEXTS[0]]}).json()["results"][0]
    assert top == expected["label"] and label.startswith(expected["label"])
    assert width == f"{100 * expected['probabilities'][top]:.1f}%"
    assert "the limit is 200" in error
    assert (tmp_path / "page.png").stat().st_size > 5000
