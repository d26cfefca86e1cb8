"""The base of every error a user can act on (bad settings, bad data, a server down, a refused promotion).

The CLI prints such an error's message, which names the file, line, key or stage, without a traceback.
"""


class SearchR1Error(Exception):
    """Base class of searchr1's user-facing errors."""
