from ...errors import TimmFreluError


class DataError(TimmFreluError, RuntimeError):
    """Data that is missing, corrupt or not in the expected layout; the message says how to fix it."""
