"""The builder's error type: library code raises it with a message that names the fix; only
`engines.build.main` prints it and exits non-zero."""

from runtime.errors import ToolkitError


class EngineBuildError(ToolkitError, ValueError):
    """Bad input to the engine builder (model file, options, environment)."""
