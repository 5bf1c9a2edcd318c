"""One exception tree for the whole package; the HTTP layer maps it to OpenAI's error envelope once."""

from __future__ import annotations


class WhisperEndpointError(Exception):
    """Base error. `status`, `error_type` and `code` follow OpenAI's error envelope."""

    status: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, object]:
        """The error as OpenAI's envelope puts it: a response body, or a stream's `error` event's field."""
        return {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}

    def __reduce__(self) -> tuple[object, ...]:
        # Raised in front-end worker processes too: keep `param` and `code` across the pickle.
        return _restore, (type(self), self.message, self.param, self.__dict__.get("code"))


def _restore(
    cls: type[WhisperEndpointError], message: str, param: str | None, code: str | None
) -> WhisperEndpointError:
    error = cls.__new__(cls)
    WhisperEndpointError.__init__(error, message, param=param, code=code)
    return error


class InvalidRequestError(WhisperEndpointError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_value"


class AudioDecodeError(InvalidRequestError):
    """The input is not audio we can decode, or contains no audio at all."""

    code = "invalid_audio"


class AudioTooLongError(InvalidRequestError):
    code = "audio_too_long"


class UnsupportedFeatureError(InvalidRequestError):
    """The engine serving this model cannot do what was asked (a capability flag is off)."""

    code = "unsupported_feature"


class SlowClientError(WhisperEndpointError):
    """The client stopped sending its request part-way (headers or body) for longer than allowed."""

    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class UploadTooLargeError(WhisperEndpointError):
    status = 413
    error_type = "invalid_request_error"
    code = "file_too_large"


class AuthenticationError(WhisperEndpointError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class NotFoundError(WhisperEndpointError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class OverloadedError(WhisperEndpointError):
    """The server's queue is full: retry after `retry_after_s`."""

    status = 429
    error_type = "rate_limit_error"
    code = "server_overloaded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ShuttingDownError(WhisperEndpointError):
    status = 503
    error_type = "server_error"
    code = "shutting_down"
    retry_after_s = 5.0


class NotReadyError(ShuttingDownError):
    code = "not_ready"


class RequestTimeoutError(WhisperEndpointError):
    status = 504
    error_type = "server_error"
    code = "timeout"


class CancelledRequestError(WhisperEndpointError):
    """The client went away; its remaining work was dropped."""

    status = 499
    code = "client_closed_request"


class ModelResolutionError(WhisperEndpointError):
    """A --model value could not be turned into a local model folder."""

    code = "model_unavailable"


class InvalidSettingsError(WhisperEndpointError):
    """Settings that contradict each other or the chosen engine (refused at start)."""

    code = "invalid_settings"


class EngineUnavailableError(WhisperEndpointError):
    """The requested engine cannot run here (missing package or hardware)."""

    code = "engine_unavailable"


class EngineFailedError(WhisperEndpointError):
    """The engine's process died while serving: this instance cannot transcribe until it is restarted
    (/ready says so), but another instance can take the request."""

    status = 503
    code = "engine_failed"
    retry_after_s = 5.0


class DiarizationUnavailableError(UnsupportedFeatureError):
    """Speakers were asked for, but the voice encoder's weights are not installed."""

    code = "diarization_unavailable"
