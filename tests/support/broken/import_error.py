"""A job module whose import fails (a dependency missing from the image)."""

import conveyor_no_such_dependency  # type: ignore[import-not-found]  # noqa: F401
