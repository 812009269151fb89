"""The closed status vocabulary: every dropped pair and every failed file gets one of these."""

from enum import StrEnum


class PairStatus(StrEnum):
    """Why an `<img>` link became (or did not become) a pair."""

    KEPT = "kept"
    NO_ALT = "no_alt"                        # the img tag has no alt attribute
    ALT_TOO_SHORT = "alt_too_short"          # normalised alt shorter than min_alt_length
    ALT_TOO_LONG = "alt_too_long"            # normalised alt longer than max_alt_length
    UNSUPPORTED_SCHEME = "unsupported_scheme"  # data:, javascript:, ftp:, file:, ... (http(s) only)
    INVALID_URL = "invalid_url"              # empty, unparsable or without a host
    DUPLICATE = "duplicate"                  # (url, text) already kept earlier in the run


class FileStatus(StrEnum):
    """How reading one WAT/WARC file ended."""

    OK = "ok"            # read to the end
    PARTIAL = "partial"  # corrupt or truncated: what could be read was kept, error says where it stopped
    FAILED = "failed"    # nothing usable (unreachable, not WARC at all): the task failed
