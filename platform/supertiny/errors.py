"""One exception hierarchy. The CLI prints ``error: <message>`` and exits 1; the server maps each
class to an OpenAI-style error body with the HTTP status given here."""


class SupertinyError(Exception):
    """Base class of every error supertiny raises on purpose."""

    http_status = 500
    error_type = "server_error"

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(SupertinyError):
    """A setting is missing or malformed."""

    http_status = 500


class DatabaseError(SupertinyError):
    """The store cannot be reached or is not usable."""

    http_status = 503


class MigrationError(DatabaseError):
    """The database schema and the migrations do not agree."""


class PluginError(SupertinyError):
    """A plugin failed to load or registered something invalid."""


class NotFoundError(SupertinyError):
    """A named thing (model, domain, route, dataset ...) does not exist."""

    http_status = 404
    error_type = "invalid_request_error"


class InvalidInputError(SupertinyError):
    """The caller gave input that cannot be used."""

    http_status = 400
    error_type = "invalid_request_error"


class ContextLengthError(InvalidInputError):
    """The prompt plus the tokens asked for do not fit the model's context window."""

    code = "context_length_exceeded"


class ModelError(SupertinyError):
    """A model could not be fetched, loaded or run."""

    http_status = 502


class BackendTimeoutError(ModelError):
    """A model backend did not answer in time."""

    http_status = 504


class ResourceError(SupertinyError):
    """The machine lacks the memory or device a job needs."""


class EngineUnavailableError(ModelError):
    """An inference engine cannot be installed, started or reached; the caller may fall back to an
    in-process backend or another tier, and must not record the failure as the model's answer."""

    http_status = 503
