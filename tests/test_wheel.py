"""An installed wheel works on its own: the set-up page finds app.yml, the loop its prompt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Run inside the wheel's venv, from a directory where the checkout is not importable.
PROBE = """
import sys
import redis
from starlette.testclient import TestClient

import bot
from bot.agent.context import system_prompt
from bot.agent.loop import TOOLS
from bot.config import load_settings
from bot.web import create_app

assert "site-packages" in bot.__file__, bot.__file__
assert "write_file(path, content)" in system_prompt(TOOLS)
client = redis.Redis.from_url(sys.argv[1])
app = create_app(load_settings({"WEBHOOK_SECRET": "s"}), redis_client=client)
page = TestClient(app).get("/")
assert page.status_code == 200, page.text
assert 'name="manifest"' in page.text, page.text
print("wheel ok")
"""


def test_an_installed_wheel_serves_the_set_up_page(tmp_path: Path, redis_url: str) -> None:
    uv = os.environ.get("UV", "uv")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    dist = tmp_path / "dist"
    subprocess.run([uv, "build", "--wheel", "-q", "-o", str(dist)], cwd=ROOT, env=env, check=True)
    (wheel,) = dist.glob("tdd_agent-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], env=env, check=True)
    python = venv / "bin" / "python"
    subprocess.run([uv, "pip", "install", "-q", "-p", str(python), str(wheel)], env=env, check=True)
    probe = subprocess.run(
        [str(python), "-c", PROBE, redis_url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert "wheel ok" in probe.stdout
