"""What a takedown asks for, and which samples of OUT it matches.

A request names URLs and sample ids. A URL is normalised as extraction normalises an `<img>` link
(surrounding whitespace, tabs and newlines dropped; http(s) only) and matches the samples whose url is that
text. A sample id matches the sample whose SAMPLE_ID (dataset/), uid (pairs/, images/, embeddings/) is that
decimal number, or whose key (img2dataset's key in images/, embeddings/, dataset/) is that text.

The match is closed over the image: a matched sample's URL, SAMPLE_ID and original image bytes (sha256) are
taken down wherever they occur, so the other captions of the same image URL and the copies of the same image
under other URLs go too. Matching reads only these columns of OUT's parquet files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.caption import CAPTION, LEGACY_CAPTION
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.uri import exists, filesystem, is_local, open_uri
from clipcrawl.tasks.ingest.normalize import resolve_url
from clipcrawl.tasks.takedown.log import canonical_url, digest

MAX_UID = 2**64 - 1
URL_COLUMNS = ("url", "URL", "final_url")  # final_url: where a redirect led
ID_COLUMNS = ("uid", "SAMPLE_ID")
LIST_ID_COLUMNS = ("SAMPLE_ID", "sample_id", "uid", "key")
# Parquet files matched here and rewritten elsewhere; keys mean a sample only in the run's own images/ folder.
KEYED = ("images", "embeddings", "dataset")


def normalize_url(url: str) -> str:
    """The URL as the pipeline stores it, then with its scheme and host lowercased, its fragment and default port
    dropped (as matching compares stored URLs); InputError naming it when it is no http(s) URL."""
    found, status = resolve_url(url, url) if isinstance(url, str) else (None, "not text")
    if found is None:
        raise InputError(f"takedown: {url!r} is not an http(s) URL ({status})")
    return canonical_url(found)


def normalize_id(sample_id) -> str:
    """A sample id as text: a SAMPLE_ID / uid (decimal) or a key; InputError when empty."""
    text = str(sample_id).strip() if sample_id is not None else ""
    if not text:
        raise InputError(f"takedown: empty sample id {sample_id!r}")
    return text


def is_uid(text: str) -> bool:
    """Whether an id's text is a SAMPLE_ID / uid: a 64-bit number in decimal, without leading zeros (a key has
    them: img2dataset's keys start with the 5-digit shard number)."""
    return text.isdigit() and int(text) <= MAX_UID and str(int(text)) == text


@dataclass(frozen=True)
class Request:
    urls: frozenset[str] = field(default_factory=frozenset)
    ids: frozenset[str] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.urls or self.ids)


def read_list(uri: str) -> tuple[list[str], list[str]]:
    """(urls, ids) of a list file. A .parquet or .csv file: its url (or URL) column, and its SAMPLE_ID,
    sample_id, uid or key column (at least one of the two kinds). Any other file: one item per line, a line
    starting with http:// or https:// a URL, any other a sample id; blank lines and lines starting with #
    are skipped; a line holding whitespace or NUL inside (`URL, reason`) is an error naming it."""
    name = uri.lower().split("?", 1)[0]
    if name.endswith((".parquet", ".csv")):
        try:
            with open_uri(uri) as f:
                if name.endswith(".parquet"):
                    table = pq.read_table(f)
                else:
                    rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")))
                    table = pa.Table.from_pylist(rows) if rows else pa.table({})
        except (OSError, pa.ArrowException, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"takedown: cannot read the list {uri}: {exc}") from exc
        urls = next((c for c in URL_COLUMNS if c in table.column_names), None)
        ids = next((c for c in LIST_ID_COLUMNS if c in table.column_names), None)
        if urls is None and ids is None:
            raise InputError(
                f"takedown: the list {uri} has no url, URL, SAMPLE_ID, sample_id, uid or key column "
                f"(its columns: {', '.join(table.column_names) or 'none'})"
            )
        pick = lambda c: [v for v in table[c].to_pylist() if v not in (None, "")] if c else []  # noqa: E731
        return pick(urls), pick(ids)
    try:
        with open_uri(uri, "rb") as f:
            lines = f.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"takedown: cannot read the list {uri}: {exc}") from exc
    items = []
    for number, line in enumerate(lines, 1):
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if "\x00" in item or any(c.isspace() for c in item):
            raise InputError(f"takedown: line {number} of {uri} is not one URL or id: {item[:200]!r}")
        items.append(item)
    urls = [i for i in items if i.lower().startswith(("http://", "https://"))]
    return urls, [i for i in items if not i.lower().startswith(("http://", "https://"))]


def request(urls: Iterable[str] = (), sample_ids: Iterable = (), list_uri: str | None = None) -> Request:
    """The takedown request: URLs normalised, ids as text; InputError on a bad item or an empty request."""
    urls, ids = list(urls or ()), list(sample_ids or ())
    if list_uri:
        more_urls, more_ids = read_list(list_uri)
        urls += more_urls
        ids += more_ids
    found = Request(frozenset(normalize_url(u) for u in urls), frozenset(normalize_id(i) for i in ids))
    if not found:
        raise InputError("takedown: give at least one URL or sample id (--url, --sample-id or --list FILE)")
    return found


@dataclass
class Matched:
    """The samples a takedown removes: every value that identifies one of them."""

    urls: set[str] = field(default_factory=set)
    uids: set[int] = field(default_factory=set)
    sha256: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)  # in OUT's images/, embeddings/ and dataset/ only
    captions: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)  # the sample keys and URLs found in OUT (the log's counts)

    def __bool__(self) -> bool:
        return bool(self.urls or self.uids or self.keys)

    def size(self) -> tuple[int, int, int, int]:
        return len(self.urls), len(self.uids), len(self.sha256), len(self.keys)

    def mask(self, table: pa.Table, keyed: bool = True) -> pa.Array:
        """Rows of `table` that belong to a matched sample (by url, uid, sha256 or, where keyed, key)."""
        hit = pa.array([False] * len(table), pa.bool_())
        names = table.column_names
        tests = [(c, self.urls, pa.string()) for c in URL_COLUMNS]
        tests += [(c, self.uids, pa.uint64()) for c in ID_COLUMNS]
        tests += [("sha256", self.sha256, pa.string())] + ([("key", self.keys, pa.string())] if keyed else [])
        for column, values, kind in tests:
            if column in names and values:
                found = pc.is_in(table[column].cast(kind), value_set=pa.array(sorted(values), kind))
                hit = pc.or_(hit, pc.fill_null(found, False))
        return hit


CAPTION_COLUMNS = (CAPTION, LEGACY_CAPTION, "TEXT")  # outputs of earlier versions too; dataset/'s TEXT
WANTED = (*URL_COLUMNS, *ID_COLUMNS, "sha256", "key", *CAPTION_COLUMNS)


def output_folders(out: str) -> list[str]:
    """The folders of OUT that a run writes and a takedown may rewrite (never OUT's other files: world/, lists)."""
    return [layout.pairs_dir(out), layout.images_dir(out), layout.embeddings_dir(out), layout.dataset_dir(out)] + [
        layout.index_dir(out)
    ]


def check_output(out: str) -> None:
    """InputError when OUT holds none of a run's output folders (a mistyped --out): nothing is created there."""
    if not any(exists(folder) for folder in output_folders(out)):
        raise InputError(
            f"takedown: {out} is not a clipcrawl output (no pairs/, images/, embeddings/, dataset/ or index/)"
        )


def parquet_files(out: str, folders: list[str] | None = None) -> Iterator[str]:
    """Every parquet file in OUT's output folders (or in `folders`), in a stable order."""
    for folder in output_folders(out) if folders is None else folders:
        fs, root = filesystem(folder)
        if not fs.exists(root):
            continue
        for path in sorted(fs.find(root)):
            if path.endswith(".parquet"):
                yield path if is_local(folder) else fs.unstrip_protocol(path)


def is_keyed(out: str, uri: str) -> bool:
    """Whether the keys of a parquet file are those of OUT's images/ folder."""
    return any(uri.startswith(folder.rstrip("/") + "/") for folder in _keyed_folders(out))


def _keyed_folders(out: str) -> list[str]:
    return [layout.images_dir(out), layout.embeddings_dir(out), layout.dataset_dir(out)]


def identifying_columns(uri: str) -> pa.Table | None:
    """The columns of a parquet file that identify samples (None when it has none)."""
    with open_uri(uri) as f:
        names = pq.ParquetFile(f).schema_arrow.names
        columns = [c for c in WANTED if c in names]
        if not any(c in names for c in (*URL_COLUMNS, *ID_COLUMNS, "key")):
            return None
        f.seek(0)
        return pq.read_table(f, columns=columns)


def _canonical(table: pa.Table) -> pa.Table:
    """The table with its URL columns compared as canonical URLs (canonical_url), the stored text kept beside."""
    for c in URL_COLUMNS:
        if c in table.column_names:
            raw = table[c].to_pylist()
            table = table.append_column(RAW + c, pa.array(raw, pa.string()))
            canon = pa.array([canonical_url(v) if v else v for v in raw], pa.string())
            table = table.set_column(table.schema.get_field_index(c), c, canon)
    return table


RAW = "__stored_"


def _collect(found: Matched, rows: pa.Table, keyed: bool) -> None:
    """Every identifying value of the matched rows into `found` (URLs both canonical and as stored)."""
    names = rows.column_names
    for c in URL_COLUMNS:
        if c in names:
            found.urls.update(v for v in rows[c].to_pylist() if v)
            stored = [v for v in rows[RAW + c].to_pylist() if v] if RAW + c in names else []
            found.urls.update(stored)
            found.held.update("url:" + v for v in rows[c].to_pylist() if v)
    for c in ID_COLUMNS:
        if c in names:
            found.uids.update(int(v) for v in rows[c].to_pylist() if v is not None)
    if "sha256" in names:
        found.sha256.update(v for v in rows["sha256"].to_pylist() if v)
    if "key" in names and keyed:
        found.keys.update(v for v in rows["key"].to_pylist() if v)
        found.held.update("key:" + v for v in rows["key"].to_pylist() if v)
    for c in CAPTION_COLUMNS:
        if c in names:
            found.captions.update(v for v in rows[c].to_pylist() if v)


def _tables(out: str) -> list[tuple[str, pa.Table]]:
    return [(uri, _canonical(t)) for uri in parquet_files(out) if (t := identifying_columns(uri)) is not None]


def match(out: str, wanted: Request) -> Matched:
    """The samples of OUT the request names, closed over their URLs, ids and image bytes (to a fixed point)."""
    found = Matched(set(wanted.urls), set(), set(), set())
    for text in wanted.ids:
        found.keys.add(text)
        if is_uid(text):
            found.uids.add(int(text))
    tables = _tables(out)
    requested_keys = set(found.keys)
    found.keys = set()
    first = True
    while True:
        before = found.size()
        for uri, table in tables:
            keyed = is_keyed(out, uri)
            probe = found
            if first and keyed:
                probe = Matched(found.urls, found.uids, found.sha256, found.keys | requested_keys)
            rows = table.filter(probe.mask(table, keyed))
            if len(rows):
                _collect(found, rows, keyed)
        if found.size() == before and not first:
            return found
        first = False


@dataclass(frozen=True)
class Hashed:
    """A match as the journal of an unfinished takedown keeps it: SHA-256 of each value (log.digest), no text."""

    urls: frozenset[str]
    uids: frozenset[str]
    sha256: frozenset[str]
    keys: frozenset[str]

    @classmethod
    def of(cls, matched: Matched) -> Hashed:
        return cls(
            frozenset(digest(u) for u in matched.urls),
            frozenset(digest(str(i)) for i in matched.uids),
            frozenset(digest(h) for h in matched.sha256),
            frozenset(digest(k) for k in matched.keys),
        )


def resolve(out: str, hashed: Hashed) -> Matched:
    """The samples still in OUT whose values hash to those of a journal (what an interrupted takedown left)."""
    found = Matched()
    tests = [(c, hashed.urls, str) for c in (*URL_COLUMNS, *(RAW + c for c in URL_COLUMNS))]
    tests += [(c, hashed.uids, str) for c in ID_COLUMNS] + [("sha256", hashed.sha256, str)]
    for uri, table in _tables(out):
        keyed = is_keyed(out, uri)
        hit = pa.array([False] * len(table), pa.bool_())
        for column, values, _ in tests + ([("key", hashed.keys, str)] if keyed else []):
            if column in table.column_names and values:
                mine = [v is not None and digest(str(v)) in values for v in table[column].to_pylist()]
                hit = pc.or_(hit, pa.array(mine, pa.bool_()))
        rows = table.filter(hit)
        if len(rows):
            _collect(found, rows, keyed)
    return found
