"""One exception tree for the whole bot; messages say what to fix."""


class TddAgentError(Exception):
    """Base of every error the bot raises on purpose."""


class ConfigError(TddAgentError):
    """The configuration is missing or wrong; the message names the fix."""


class SandboxUnavailable(TddAgentError):
    """The sandbox backend cannot run at all on this machine (e.g. no user namespaces)."""


class SandboxError(TddAgentError):
    """A sandbox backend failed while running (not the code under test)."""


class JournalError(TddAgentError):
    """The run journal refuses an operation."""


class JournalMismatch(JournalError):
    """Replayed inputs differ from the recorded ones: the code or prompt changed."""


class LeaseLost(JournalError):
    """Another process owns the run now; this one must stop writing."""


class ModelError(TddAgentError):
    """The model API failed after retries."""


class GitHubError(TddAgentError):
    """The GitHub API failed after retries."""
