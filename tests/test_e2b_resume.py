"""A resumed run reattaches to the E2B sandbox whose id its journal recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import groq
import pytest
import redis

from bot import wiring
from bot.agent.context import Task
from bot.agent.model import GroqModel
from bot.config import load_settings
from bot.errors import ModelError
from bot.journal import RunJournal
from bot.run import RunRequest, execute
from bot.sandbox.e2b import E2BSandbox
from tests.fakes import groq as g
from tests.fakes.e2b_envd import FakeE2B

TESTS = {"test_calc.py": "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"}
TASK = Task(text="Write add(a, b).", tests=TESTS, target="calc.py")
WRONG = "def add(a, b):\n    return a * b\n"
RIGHT = "def add(a, b):\n    return a + b\n"


def sandbox_for(fake: FakeE2B) -> E2BSandbox:
    return E2BSandbox(api_key=fake.api_key, python=sys.executable, **fake.sdk_options())


def test_resume_reconnects_to_the_recorded_sandbox(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    settings = load_settings({"GROQ_API_KEY": "gsk_test", "LEASE_SECONDS": "1"})
    write = [g.tool_call("write_file", {"path": "calc.py", "content": c}) for c in (WRONG, RIGHT)]
    with FakeE2B(tmp_path / "e2b") as e2b, g.FakeGroq([write[0]]) as fake_groq:
        model = GroqModel(groq.Groq(api_key="gsk_test", base_url=fake_groq.url, max_retries=0))
        first = sandbox_for(e2b)
        # The second model turn finds Groq down: the run stops, the sandbox stays alive
        # (as when a worker dies without closing it).
        with pytest.raises(ModelError):
            execute(
                RunRequest("e2b-run", TASK),
                client=redis_client,
                model=model,
                sandbox=first,
                config=wiring.run_config(settings),
            )
        recorded = RunJournal(redis_client, "e2b-run").get_meta("sandbox_id")
        assert recorded == first.sandbox_id and e2b.created() == [recorded]

        fake_groq.script(write[1])
        second = sandbox_for(e2b)
        try:
            outcome = execute(
                RunRequest("e2b-run", TASK),
                client=redis_client,
                model=model,
                sandbox=second,
                config=wiring.run_config(settings),
            )
        finally:
            second.close()
        assert outcome.passed
        assert second.sandbox_id == recorded, "reattached, not recreated"
        assert e2b.created() == [recorded]
        assert f"POST /v2/sandboxes/{recorded}/connect" in e2b.calls
        assert e2b.alive() == [], "killed when the run ended"
