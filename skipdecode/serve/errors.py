"""The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}`` with its status."""

from __future__ import annotations

# status -> OpenAI error type
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error answered to the client; the message is one line."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message.splitlines()[0] if message else "error"
        self.param = param
        self.code = code

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """
    >>> error_body(429, "queue full")["error"]["type"]
    'rate_limit_error'
    """
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}}
