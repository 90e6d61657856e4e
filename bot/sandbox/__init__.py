"""Sandboxes: where candidate code and its tests run."""

from bot.sandbox.base import Sandbox, TestResult, Workspace

__all__ = ["Sandbox", "TestResult", "Workspace"]
