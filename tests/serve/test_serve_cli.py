"""`resnets serve` as a user runs it: mistakes are one line and exit 2 before the model loads; SIGTERM lets the
requests in flight finish and exits 0, in one process and with worker processes."""
from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from resnets.cli import main  # noqa: E402

TIMEOUT = 30


def one_line_error(capsys: pytest.CaptureFixture, *argv: str | Path) -> str:
    code = main(["serve", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, fragment", [
    (["--max-batch", "0"], "--max-batch must be >= 1, got 0"),
    (["--max-wait-ms", "-1"], "--max-wait-ms must be a number >= 0"),
    (["--max-body-mb", "0"], "--max-body-mb must be a number > 0"),
    (["--read-timeout-s", "inf"], "--read-timeout-s must be a number > 0"),
    (["--max-queue", "8"], "--max-queue 8 is below --max-images 32"),
    (["--max-pixels", "1000000000"], "--max-pixels must be in 1..89,478,485"),
    (["--port", "70000"], "--port must be in 1..65535, got 70000"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--api-key", " "], "--api-key is empty"),
    (["--api-key", "clé"], "the API key must be printable ASCII without spaces or control characters"),
    (["--api-key", "two words"], "the API key must be printable ASCII"),
    (["--api-key", "tab\tin-it"], "the API key must be printable ASCII"),
    (["--max-in-flight", "0"], "--max-in-flight must be >= 1, got 0"),
    (["--device", "tpu"], "is not a device"),
])
def test_a_bad_argument_is_one_line_before_the_model_loads(capsys, tmp_path, argv, fragment):
    # The source does not exist: an error about it would mean the model was loaded before the arguments were checked.
    err = one_line_error(capsys, tmp_path / "no-such-run", *argv)
    assert err.startswith("resnets serve: error: ") and fragment in err


def test_an_unreadable_or_empty_key_file_is_one_line(capsys, tmp_path):
    err = one_line_error(capsys, tmp_path, "--api-key-file", tmp_path / "missing.txt")
    assert "--api-key-file" in err and "cannot read it (No such file or directory)" in err
    (tmp_path / "empty.txt").write_text("\n  \nsecond line\n")
    assert "its first line is empty" in one_line_error(capsys, tmp_path, "--api-key-file", tmp_path / "empty.txt")
    (tmp_path / "key.txt").write_text("k\n")
    assert "not allowed with argument" in one_line_error(capsys, tmp_path, "--api-key", "k", "--api-key-file",
                                                         tmp_path / "key.txt")


@pytest.mark.timeout(20)  # opening a FIFO waits for a writer: a read before the check would never end
def test_a_key_file_that_is_not_a_regular_file_or_is_too_large_is_one_line(capsys, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    assert "fifo: not a regular file" in one_line_error(capsys, tmp_path, "--api-key-file", tmp_path / "fifo")
    (tmp_path / "big.txt").write_bytes(b"the-key\n" + b"x" * 70_000)
    err = one_line_error(capsys, tmp_path, "--api-key-file", tmp_path / "big.txt")
    assert "big.txt: 70,008 bytes, more than a key file holds (65,536 at most)" in err


def test_no_source_and_a_port_in_use_are_one_line(capsys, tiny):
    assert "give SOURCE" in one_line_error(capsys)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = one_line_error(capsys, tiny["run"], "--port", port)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err


def test_without_the_serve_extra_the_command_says_how_to_install_it(capsys, monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what `import uvicorn` meets where it is not installed
    err = one_line_error(capsys, tiny["run"])
    assert err == "resnets serve: error: resnets serve needs the serve extra: pip install 'resnets[serve]'\n"


def _post_in_threads(url: str, image: Path, n: int, headers: dict[str, str]) -> tuple[list, list[threading.Thread]]:
    answers: list = []

    def post() -> None:
        try:
            answers.append(httpx.post(f"{url}/predict", content=image.read_bytes(), timeout=TIMEOUT,
                                      headers={"Content-Type": "image/png", **headers}))
        except httpx.HTTPError as e:  # kept, so that the test names it rather than a thread's traceback
            answers.append(e)

    threads = [threading.Thread(target=post) for _ in range(n)]
    for t in threads:
        t.start()
    return answers, threads


def _queue_depth(url: str, headers: dict[str, str]) -> float:
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=TIMEOUT).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("resnets_queue_depth ")))


def test_sigterm_lets_the_requests_in_flight_finish_and_exits_0(tiny, server_process, tmp_path):
    import time

    (tmp_path / "key.txt").write_text("the-key\nignored\n")
    auth = {"Authorization": "Bearer the-key"}
    server = server_process(tiny["run"], "--max-wait-ms", "2500", "--device", "cpu", "--api-key-file",
                            tmp_path / "key.txt")
    server.wait_ready()
    answers, threads = _post_in_threads(server.url, tiny["files"][0], 3, auth)
    deadline = time.monotonic() + 20
    while _queue_depth(server.url, auth) < 3:  # all three wait in the batcher for its 2.5 s
        assert time.monotonic() < deadline, answers
        time.sleep(0.02)
    assert server.stop() == 0, server.output()
    for t in threads:
        t.join(timeout=TIMEOUT)
    assert [getattr(a, "status_code", a) for a in answers] == [200, 200, 200]
    assert all(a.json()["predictions"][0]["top"][0]["class"] == "apple" for a in answers)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)
    lines = server.out.read_text().splitlines()
    assert lines == [f"serving cifar_resnet20 (torch, 3 classes) on {server.url} — docs at /docs",
                     f"stopped serving on {server.url} (SIGTERM)"]


def test_worker_processes_serve_and_stop_on_sigterm(tiny, server_process):
    server = server_process(tiny["run"], "--workers", "2", "--device", "cpu")
    server.wait_ready()
    for file, expected in zip(tiny["files"][:3], ("apple", "banana", "cherry")):
        r = httpx.post(f"{server.url}/predict", files=[("f", (file.name, file.read_bytes()))], timeout=TIMEOUT)
        assert r.status_code == 200 and r.json()["predictions"][0]["top"][0]["class"] == expected, r.text
    assert server.stop() == 0, server.output()
    assert "with 2 workers" in server.out.read_text().splitlines()[0]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)


def test_the_socket_sends_answers_without_waiting_for_acks():
    # Accepted connections inherit TCP_NODELAY: without it each answer on a kept-alive connection waited ~40 ms for
    # the client's delayed ACK (BENCHMARKS.md, "Serving").
    import socket

    from resnets.serve.commands import listen

    sock = listen("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()
