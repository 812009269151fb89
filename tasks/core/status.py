"""The closed status vocabulary: every dropped pair and every failed file gets one of these."""

from enum import StrEnum


class PairStatus(StrEnum):
    """Why an `<img>` link became (or did not become) a pair."""

    KEPT = "kept"
    NO_ALT = "no_alt"  # the img tag has no alt attribute
    ALT_TOO_SHORT = "alt_too_short"  # normalised alt shorter than min_alt_length
    ALT_TOO_LONG = "alt_too_long"  # normalised alt longer than max_alt_length
    UNSUPPORTED_SCHEME = "unsupported_scheme"  # data:, javascript:, ftp:, file:, ... (http(s) only)
    INVALID_URL = "invalid_url"  # empty, unparsable or without a host
    # The page opts its images out (ExtractSettings.respect_page_optouts): its robots meta tag (name=robots or
    # name=<our token>) or X-Robots-Tag response header says noai / noimageai / noindex / noimageindex / none
    PAGE_OPT_OUT = "page_opt_out"
    TDM_RESERVED_HEADER = "tdm_reserved_header"  # W3C TDMRep: the page response says tdm-reservation: 1
    TDM_RESERVED_META = "tdm_reserved_meta"  # W3C TDMRep: the page has <meta name="tdm-reservation" content="1">
    DUPLICATE = "duplicate"  # (url, text) already kept earlier in the run


class RecordStatus(StrEnum):
    """Why a WARC/WAT record gave no page (`skipped_records` of a file's stats). Every record is an HTML page
    (`html_pages`), skipped for one of these, or malformed (`malformed_records`), so the three add up to
    `records`."""

    NOT_A_PAGE = "not_a_page"  # warcinfo, request, a non-HTML response, WAT metadata of no response
    HTTP_ERROR = "http_error"  # the response's status is not 2xx
    RECORD_TOO_LARGE = (
        "record_too_large"  # a WAT record's JSON over max_record_bytes (or MAX_JSON_VALUES): skipped unread
    )


class FileStatus(StrEnum):
    """How reading one WAT/WARC file ended."""

    OK = "ok"  # read to the end
    PARTIAL = "partial"  # corrupt or truncated: what could be read was kept, error says where it stopped
    FAILED = "failed"  # nothing usable (unreachable, not WARC at all): the task failed


class DownloadStatus(StrEnum):
    """How downloading one sample ended; every row of images/{shard}.parquet has one."""

    SUCCESS = "success"
    TIMEOUT = "timeout"  # connect, read or total timeout
    DNS_ERROR = "dns_error"  # the host name does not resolve
    CONNECTION_ERROR = "connection_error"  # refused, reset, TLS failure, server disconnected
    HTTP_4XX = "http_4xx"  # 4xx after retries of 429 (http_status column has the code)
    HTTP_5XX = "http_5xx"  # 5xx after retries
    TOO_MANY_REDIRECTS = "too_many_redirects"  # more than max_redirects, or a redirect loop
    TOO_LARGE = "too_large"  # declared or received bytes over max_bytes
    TOO_SMALL_BYTES = "too_small_bytes"  # fewer bytes than min_bytes (LAION-400M: 5 KB)
    TOO_SMALL_PIXELS = "too_small_pixels"  # smaller side under min_image_size
    TOO_MANY_PIXELS = "too_many_pixels"  # over max_image_pixels: decompression-bomb guard
    BAD_ASPECT_RATIO = "bad_aspect_ratio"  # aspect ratio over max_aspect_ratio
    NOT_AN_IMAGE = "not_an_image"  # the bytes are no image format Pillow knows (HTML, SVG, ...)
    DECODE_ERROR = "decode_error"  # an image format, but truncated or corrupt
    OPT_OUT_HEADER = "opt_out_header"  # X-Robots-Tag noai / noimageai / noindex / noimageindex
    ROBOTS_DISALLOWED = "robots_disallowed"  # the image host's robots.txt disallows our user agent
    TDM_RESERVED_HEADER = "tdm_reserved_header"  # W3C TDMRep: the image response says tdm-reservation: 1
    TDM_RESERVED_FILE = "tdm_reserved_file"  # W3C TDMRep: the origin's /.well-known/tdmrep.json reserves the URL
    # W3C TDMRep: the /.well-known/tdmrep.json of the page's origin reserves the page the image was found on (its
    # caption is the page's text); decided before the image is requested
    TDM_RESERVED_PAGE_FILE = "tdm_reserved_page_file"
    BLOCKED_ADDRESS = "blocked_address"  # the host resolves to a private/loopback/reserved address
    UNSUPPORTED_SCHEME = "unsupported_scheme"  # not http(s)
    BLOCKLISTED = "blocklisted"  # on a known-bad list (URL, domain, MD5, SHA-256, PDQ): nothing of it is kept
    TAKEN_DOWN = "taken_down"  # removed by a takedown under OUT (OUT/takedown/log.jsonl): never fetched again


class EmbedStatus(StrEnum):
    """How embedding one downloaded sample ended; stats failures carry the others."""

    EMBEDDED = "embedded"  # image and caption embedded, row in embeddings/ (and maybe dataset/)
    MISSING_IMAGE = "missing_image"  # a success in the shard's parquet without an image member in its tar
    DECODE_ERROR = "decode_error"  # the tar member's bytes do not decode as an image
    NO_CAPTION = "no_caption"  # the row's caption is missing or blank: never compared with its image, never kept
    TAKEN_DOWN = "taken_down"  # removed by a takedown under OUT (OUT/takedown/log.jsonl): not embedded again


# LAION-400M's NSFW tag, the values of the NSFW column (tasks/embed/stage.py tags, the report counts), most flagged first
NSFW, UNSURE, UNLIKELY = NSFW_TAGS = ("NSFW", "UNSURE", "UNLIKELY")
