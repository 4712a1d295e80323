"""Errors that mmopt raises for model and LLM failures.

Bad *arguments* raise ``ValueError``/``TypeError`` (see DESIGN.md, convention
6); these classes cover failures of the things mmopt drives.
"""


class MmoptError(Exception):
    """Base class of mmopt's own errors."""


class ModelLoadError(MmoptError):
    """A model id or directory could not be loaded (unknown id, not a pipeline, no network)."""


class LLMError(MmoptError):
    """An LLM backend failed on a request (a reply it could not give, a bad request)."""


class LLMUnavailableError(LLMError):
    """The LLM cannot be reached at all: connection refused, timeouts, HTTP 5xx after the
    retries, a rejected key. An infrastructure failure, not a result: the loop stops the run
    as interrupted (nothing finished is lost) so that a rerun resumes once the LLM is back."""


class StopRequested(MmoptError):
    """Raised by a callback (``cb(event, **info)``) to stop a run between trials. The loop
    treats it like Ctrl-C: everything finished is stored, the run is marked "interrupted",
    and running the same optimizer again resumes it."""


class StoreError(MmoptError):
    """A run store cannot be used: a damaged database, a folder that cannot be written,
    a run another process is writing."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, purpose: str = ""):
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"{package} is required{what} but is not installed. "
            f"Install it with: pip install 'mmopt[{extra}]'"
        )
        self.package = package
        self.extra = extra
