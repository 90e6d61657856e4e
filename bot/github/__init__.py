"""GitHub: webhook verification and routing (pure), App auth, API calls, publishing."""
