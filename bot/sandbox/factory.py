"""Choosing and building the sandbox backend from settings (the one place that does)."""

from __future__ import annotations

from bot.config import Settings
from bot.errors import ConfigError
from bot.sandbox.base import Sandbox


def backend_name(settings: Settings) -> str:
    """`e2b` when chosen or when E2B_API_KEY is set under `auto`; `local` otherwise."""
    if settings.sandbox == "auto":
        return "e2b" if settings.e2b_api_key is not None else "local"
    return settings.sandbox


def build_sandbox(settings: Settings) -> Sandbox:
    name = backend_name(settings)
    if name == "e2b":
        if settings.e2b_api_key is None or not settings.e2b_api_key.get_secret_value():
            raise ConfigError(
                "SANDBOX=e2b needs E2B_API_KEY. Get a key at https://e2b.dev/dashboard, "
                "or set SANDBOX=local to use the local bubblewrap sandbox."
            )
        from bot.sandbox.e2b import E2BSandbox

        return E2BSandbox(
            api_key=settings.e2b_api_key.get_secret_value(),
            template=settings.e2b_template,
            # The sandbox never outlives the run's wall budget by much, even if we die.
            sandbox_timeout=int(settings.max_wall_seconds + 300),
            test_timeout=settings.test_timeout,
            warm=settings.warm_runner,
        )
    from bot.sandbox.jail import SandboxLimits
    from bot.sandbox.local import LocalSandbox

    limits = SandboxLimits(wall_seconds=settings.test_timeout)  # type: ignore[call-arg]
    if settings.warm_runner:
        from bot.sandbox.warm import WarmLocalSandbox

        return WarmLocalSandbox(limits=limits)  # type: ignore[call-arg]
    return LocalSandbox(limits=limits)  # type: ignore[call-arg]
