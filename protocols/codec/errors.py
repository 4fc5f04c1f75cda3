"""Errors raised at the wire boundary.

Every way a frame can be wrong has its own `ProtocolError` subclass, so a receiver can log it,
drop the message (or answer a request with an error reply) and carry on. The message of each
error names what was expected and what arrived.
"""


class ProtocolError(Exception):
    """A message could not be accepted. Never fatal for the receiving process."""


class FrameLayoutError(ProtocolError):
    """The multipart frames do not have the envelope's layout."""


class SignatureError(ProtocolError):
    """The HMAC signature is missing or does not match the run's key."""


class VersionMismatch(ProtocolError):
    """The sender speaks another protocol version."""


class MalformedPayload(ProtocolError):
    """A header, parent header or body is not valid strict msgpack of the expected shape."""


class UnknownMessageType(ProtocolError):
    """The header names a message type this process does not know."""


class FieldError(ProtocolError):
    """A body field is missing or has the wrong type, dtype or shape."""
