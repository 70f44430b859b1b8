"""The error of a refused request, apart from TensorFlow so that limits load without it."""


class ServingError(Exception):
    """A failed request: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
