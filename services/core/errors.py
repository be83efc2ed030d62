"""Domain exceptions. Services raise these; only services.core.status turns them into gRPC statuses."""


class ServingError(Exception):
    """Base of every error a caller can act on; the message names the field or limit involved."""


class InvalidArgument(ServingError):
    """A bad or missing request field."""


class NotFound(ServingError):
    """An unknown model or version."""


class ResourceExhausted(ServingError):
    """A queue or rate limit is full; retrying later may succeed (after `retry_after_s` when it is known)."""

    retry_after_s: float | None = None


class QueueFull(ResourceExhausted):
    """A bounded batcher/scheduler queue has no room for the submitted items."""


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before the work ran."""


class Unavailable(ServingError):
    """Not serving right now: models loading, server draining, or a backend down."""


class Unauthenticated(ServingError):
    """Missing or wrong credentials."""


class ModelFailure(Exception):
    """The model runtime can no longer run (not the request's fault): the process should be restarted."""
