"""The toolkit's one base error class.

Every error the toolkit raises on purpose (bad input, a model file that does not fit, a missing
library) derives from ToolkitError and carries a message that names the fix. Entry points (`main`)
catch ToolkitError alone: a bare `except ValueError` would also swallow real bugs raised by numpy,
torch or onnx. It lives in runtime/, the bottom layer, so that every package can derive from it.
"""


class ToolkitError(Exception):
    """An error whose message says what to fix; only `main()` functions catch it, print it and exit."""
