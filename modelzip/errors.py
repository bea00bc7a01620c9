"""The exceptions modelzip raises: one base class, so callers can catch everything with one clause."""


class ModelzipError(Exception):
    """Base class of every error modelzip raises on purpose."""


class FormatError(ModelzipError):
    """A .mzip file (or byte string) is not valid: wrong magic, unknown version, bad header."""


class TruncatedError(FormatError):
    """A .mzip file ends before the header or a section it declares."""


class ChecksumError(FormatError):
    """A section's bytes do not match the CRC-32 recorded in the header: the file is corrupt."""


class LimitError(FormatError):
    """A file declares more than a reader's limit allows (decoded size, header size or nesting), checked before
    anything is allocated: a decompression bomb, or a trusted file whose limit the caller must raise."""


class DataError(ModelzipError):
    """A data set cannot be read or does not have the shape or contents it should."""


class ConfigError(ModelzipError):
    """A recipe or config value is missing, unknown or out of range."""


class ModelError(ModelzipError):
    """A model cannot be built, loaded or compressed (unknown name, unsupported layer, NaN weights)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: errors from user code are reported in one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
