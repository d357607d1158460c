"""The operator's web console (README "Web console"): served by the supervisor, on the
metrics port or its own, server-rendered HTML with a few lines of its own JavaScript."""
