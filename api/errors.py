"""Error classes of the public API, with the names and hierarchy of the reference."""


class QCGPJMAError(Exception):
    """Base of every error raised by the client API."""


class InternalError(QCGPJMAError):
    """The service answered something the client cannot interpret."""


class InvalidJobDescriptionError(QCGPJMAError):
    """A job description breaks the schema; the message names job, field and reason."""

    def __init__(self, problems: "list[str] | str") -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class JobNotDefinedError(QCGPJMAError):
    """A job name is not known."""


class ConnectionError(QCGPJMAError):  # noqa: A001 - name fixed by the reference API
    """The service cannot be reached or refused the request."""


class UnknownJobError(JobNotDefinedError, ConnectionError):
    """A request named a job the service does not know. The original answers such a `wait4` or
    `info_parsed` with ConnectionError ("Request failed - Job ... doesn't exist"): a handler of either
    class catches it."""


class WrongArgumentsError(QCGPJMAError):
    """A client method got arguments it cannot use."""


class FileError(QCGPJMAError):
    """A file could not be read or written."""


class ServiceError(QCGPJMAError):
    """The service could not be started or failed."""


class TimeoutElapsed(Exception):
    """A wait ran past its timeout (not a QCGPJMAError, as in the reference)."""
