"""E2BSandbox end to end: the real e2b SDK against a fake E2B cloud on loopback.

The fake (tests/fakes/e2b_envd.py) serves the control plane and envd's Connect RPC and files
API, and runs commands for real on this host, so every test exercises the SDK's HTTP, RPC
streaming and error mapping as it runs against E2B.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.errors import ConfigError, SandboxError
from bot.sandbox.e2b import E2BSandbox
from tests.fakes.e2b_envd import FakeE2B, pid_alive

CALC = "def add(a, b):\n    return a + b\n"
TESTS = (
    "from calc import add\n\n"
    "def test_add():\n    assert add(2, 3) == 5\n\n"
    "def test_zero():\n    assert add(0, 0) == 0\n"
)
PASSING = {"calc.py": CALC, "test_calc.py": TESTS}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeE2B]:
    with FakeE2B(tmp_path / "e2b") as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make(fake: FakeE2B, sleeps: list[float]) -> Iterator[Callable[..., E2BSandbox]]:
    made: list[E2BSandbox] = []

    def _make(**overrides: Any) -> E2BSandbox:
        options: dict[str, Any] = {
            "api_key": fake.api_key,
            "python": sys.executable,  # the fake runs commands on this host
            "test_timeout": 30,
            "create_timeout": 5,
            "sleep": sleeps.append,
            **fake.sdk_options(),
            **overrides,
        }
        sandbox = E2BSandbox(**options)
        made.append(sandbox)
        return sandbox

    yield _make
    for sandbox in made:
        sandbox.close()


def run_dir_on_host(fake: FakeE2B, index: int = -1) -> Path:
    start = fake.starts[index]
    return fake.sandboxes[start.sandbox_id].host_path(start.cwd)


def test_passing_suite_is_ok_with_counts(fake: FakeE2B, make: Callable[..., E2BSandbox]) -> None:
    sandbox = make(test_timeout=20)

    result = sandbox.run_tests(PASSING)

    assert result.ok, result.output
    assert (result.exit_code, result.passed, result.failed, result.errors) == (0, 2, 0, 0)
    assert fake.created() == [sandbox.sandbox_id]
    start = fake.starts[0]
    assert start.cwd.startswith("/tmp/tdd/run-")
    assert "timeout -s KILL 20 " in start.args[-1]
    assert start.envs["PYTHONDONTWRITEBYTECODE"] == "1"
    assert start.envs["PYTHONPATH"] == f"{start.cwd}/.tdd"
    # Workspace and plugin go up in one request, into the run directory.
    assert sum(call.startswith("envd POST /files") for call in fake.calls) == 1
    host = run_dir_on_host(fake)
    assert (host / "calc.py").read_text() == CALC
    assert (host / ".tdd" / "tdd_report_plugin.py").is_file()


def test_failing_suite_is_a_result_not_an_error(make: Callable[..., E2BSandbox]) -> None:
    noisy = TESTS.replace("assert add(2, 3) == 5", "print('x' * 50_000)\n    assert add(2, 3) == 5")
    sandbox = make(output_cap=4000)

    result = sandbox.run_tests({"calc.py": CALC.replace("a + b", "a - b"), "test_calc.py": noisy})

    assert not result.ok
    assert result.exit_code == 1  # CommandExitException mapped, not raised
    assert (result.passed, result.failed) == (1, 1)
    assert result.failing == ("test_calc.py::test_add",)
    assert result.sandbox_error is None and not result.timed_out
    assert result.output_truncated and len(result.output) < 4100
    assert "characters clipped" in result.output
    assert "1 failed, 1 passed" in result.output  # the tail survives the cap


def test_one_sandbox_serves_runs_in_fresh_directories(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    sandbox = make()

    first = sandbox.run_tests(PASSING)
    second = sandbox.run_tests({"test_only.py": "def test_only():\n    pass\n"})

    assert first.passed == 2
    assert second.passed == 1  # test_calc.py from the first run is not there
    assert fake.created() == [sandbox.sandbox_id]
    assert len({start.cwd for start in fake.starts}) == 2


def test_timeout_kills_the_run_and_reports_timed_out(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    hang = "import time\n\ndef test_hang():\n    time.sleep(60)\n"
    sandbox = make(test_timeout=2)

    result = sandbox.run_tests({"test_hang.py": hang})

    assert result.timed_out and not result.ok
    assert result.exit_code == 137
    assert 2 <= result.duration < 10
    # Killed in the sandbox, not just abandoned by the client.
    assert not pid_alive(fake.starts[0].pid)
    assert fake.sandboxes[fake.starts[0].sandbox_id].live_processes() == []


def test_reconnects_by_id_after_our_process_crashed(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    sandbox_id = make().start()  # then the worker dies without close()

    revived = make(sandbox_id=sandbox_id)

    assert revived.start() == sandbox_id
    assert fake.created() == [sandbox_id]
    assert f"POST /v2/sandboxes/{sandbox_id}/connect" in fake.calls


def test_dead_sandbox_id_is_replaced(fake: FakeE2B, make: Callable[..., E2BSandbox]) -> None:
    old = fake.add_sandbox(access_token="old-token")
    fake.crash(old.sandbox_id)
    sandbox = make(sandbox_id=old.sandbox_id)

    new_id = sandbox.start()

    assert new_id != old.sandbox_id and sandbox.sandbox_id == new_id
    assert fake.created() == [sandbox.sandbox_id]


def test_sandbox_dying_between_runs_is_replaced(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    sandbox = make()
    first_id = sandbox.start()
    fake.crash(first_id)  # e.g. it reached its timeout

    result = sandbox.run_tests(PASSING)

    assert result.ok
    assert sandbox.sandbox_id != first_id
    assert fake.created() == [first_id, sandbox.sandbox_id]


def test_connection_lost_mid_run_reconnects_once(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    fake.drop_starts = 1
    sandbox = make()

    result = sandbox.run_tests(PASSING)

    assert result.ok
    assert len(fake.starts) == 2
    assert fake.created() == [sandbox.sandbox_id]
    assert f"POST /v2/sandboxes/{sandbox.sandbox_id}/connect" in fake.calls


def test_connection_lost_twice_is_a_sandbox_error(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    fake.drop_starts = 2
    sandbox = make()

    with pytest.raises(SandboxError, match="failed twice"):
        sandbox.run_tests(PASSING)


def test_creation_retries_5xx_and_429(
    fake: FakeE2B, make: Callable[..., E2BSandbox], sleeps: list[float]
) -> None:
    fake.create_faults = [500, 429, 503]
    sandbox = make(
        create_attempts=4, backoff=1.0, backoff_max=2.0, sandbox_timeout=120, template="tdd-py"
    )

    sandbox_id = sandbox.start()

    assert fake.created() == [sandbox_id]
    assert fake.create_requests[-1]["timeout"] == 120
    assert fake.create_requests[-1]["templateID"] == "tdd-py"
    assert len(fake.create_requests) == 4
    assert len(set(fake.create_keys)) == 1 and fake.create_keys[0]  # one idempotency key
    assert len(sleeps) == 3 and all(0 < s <= 2.0 for s in sleeps)


def test_creation_that_hangs_is_retried(fake: FakeE2B, make: Callable[..., E2BSandbox]) -> None:
    fake.create_faults = ["hang"]
    sandbox = make(create_timeout=0.3)

    sandbox_id = sandbox.start()

    assert len(fake.create_requests) == 2
    assert fake.created() == [sandbox_id]


def test_creation_gives_up_with_a_sandbox_error(
    fake: FakeE2B, make: Callable[..., E2BSandbox], sleeps: list[float]
) -> None:
    fake.create_faults = [503, 502, 429]
    sandbox = make(create_attempts=3)

    with pytest.raises(SandboxError, match="after 3 attempts"):
        sandbox.run_tests(PASSING)

    assert len(fake.create_requests) == 3 and len(sleeps) == 2
    assert fake.created() == [] and sandbox.sandbox_id is None


def test_bad_request_and_bad_key_are_not_retried(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    fake.create_faults = [400]
    with pytest.raises(SandboxError, match="Could not create"):
        make().start()
    with pytest.raises(ConfigError, match="E2B_API_KEY"):
        make(api_key="e2b_wrong").start()
    assert len(fake.create_requests) == 1  # the wrong key never got past authentication


def test_close_kills_the_sandbox_once(fake: FakeE2B, make: Callable[..., E2BSandbox]) -> None:
    sandbox = make()
    sandbox_id = sandbox.start()

    sandbox.close()
    sandbox.close()

    assert fake.alive() == []
    assert fake.calls.count(f"DELETE /sandboxes/{sandbox_id}") == 1
    with pytest.raises(SandboxError, match="closed"):
        sandbox.run_tests(PASSING)


def test_close_kills_a_journaled_sandbox_even_if_unused(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    old = fake.add_sandbox(access_token="token")

    make(sandbox_id=old.sandbox_id).close()

    assert fake.alive() == []
    assert fake.calls == [f"DELETE /sandboxes/{old.sandbox_id}"]


def test_close_without_a_sandbox_does_nothing(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    make().close()

    assert fake.calls == []


def test_api_key_never_reaches_the_sandbox(fake: FakeE2B, make: Callable[..., E2BSandbox]) -> None:
    dump_env = (
        "import json, os\n\n"
        "def test_env():\n"
        "    open('env.json', 'w').write(json.dumps(dict(os.environ)))\n"
    )
    sandbox = make()

    assert sandbox.run_tests({"test_env.py": dump_env}).ok

    process_env = json.loads((run_dir_on_host(fake) / "env.json").read_text())
    assert fake.api_key not in json.dumps(process_env)
    assert fake.create_requests[0]["envVars"] == {}
    for start in fake.starts:
        assert fake.api_key not in json.dumps([start.cmd, start.args, start.envs])
    for headers in fake.envd_headers:
        assert "x-api-key" not in headers and fake.api_key not in headers.values()


def test_debug_mode_skips_the_control_plane(fake: FakeE2B, make: Callable[..., E2BSandbox]) -> None:
    fake.add_sandbox("debug_sandbox_id")  # the SDK's fixed id in debug mode, no token
    sandbox = make(debug=True, api_key="")

    result = sandbox.run_tests(PASSING)
    sandbox.close()

    assert result.ok
    assert sandbox.sandbox_id == "debug_sandbox_id"
    assert [call for call in fake.calls if not call.startswith("envd ")] == []


def test_workspace_paths_must_stay_in_the_run_directory(
    fake: FakeE2B, make: Callable[..., E2BSandbox]
) -> None:
    with pytest.raises(ValueError, match="not a relative path inside the workspace"):
        make().run_tests({"../escape.py": ""})
    assert fake.calls == []
