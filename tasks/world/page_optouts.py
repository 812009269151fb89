"""Pages of the world that opt their images out, or reserve text-and-data-mining rights, and their controls.

Every crawl file ends with one page of each kind below (drawn with their own random stream, so the file's
other pages stay as they were): the page's meta tags go into its HTML head and into the WAT's
HTML-Metadata -> Head -> Metas, its headers into its response, in the WARC and in the WAT's
HTTP-Response-Metadata -> Headers, as Common Crawl writes them.

`status` is the ground truth, written from this table alone (never from the extractor's code): what a
correct extractor under the default ExtractSettings makes of each of the page's img links that pass the
alt-text and URL filters. None: the page withholds nothing (a control), the links stay pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipcrawl.tasks.core.status import PairStatus

TDM_POLICY = "https://rights.world.test/tdm-policy.json"


@dataclass(frozen=True)
class PageOptOut:
    name: str
    what: str
    metas: tuple[dict[str, str], ...] = ()  # WAT Metas entries, keys in Common Crawl's order (name, content)
    headers: tuple[tuple[str, str], ...] = ()  # page response headers (names as sent)
    status: PairStatus | None = None


PAGE_OPT_OUTS = (
    PageOptOut(
        "robots_meta_noai",
        "<meta name=robots content='noai, noimageai'>",
        metas=({"name": "robots", "content": "noai, noimageai"},),
        status=PairStatus.PAGE_OPT_OUT,
    ),
    PageOptOut(
        "ourbot_meta",
        "<meta name=ClipCrawl content=noimageindex>: robots directives for our crawler by name",
        metas=({"name": "ClipCrawl", "content": "noimageindex"},),
        status=PairStatus.PAGE_OPT_OUT,
    ),
    PageOptOut(
        "otherbot_meta",
        "<meta name=otherbot content='noai, noindex'> and robots 'index, follow, otherbot: noai': "
        "for another crawler only",
        metas=(
            {"name": "robots", "content": "index, follow, otherbot: noai"},
            {"name": "otherbot", "content": "noai, noindex"},
        ),
    ),
    PageOptOut(
        "x_robots_tag",
        "two X-Robots-Tag headers, differently cased: max-image-preview: large, then noai",
        headers=(("X-Robots-Tag", "max-image-preview: large"), ("x-robots-tag", "noai")),
        status=PairStatus.PAGE_OPT_OUT,
    ),
    PageOptOut(
        "tdm_meta",
        "<meta name=tdm-reservation content=1> and a tdm-policy meta",
        metas=({"name": "tdm-reservation", "content": "1"}, {"name": "tdm-policy", "content": TDM_POLICY}),
        status=PairStatus.TDM_RESERVED_META,
    ),
    PageOptOut(
        "tdm_header",
        "TDM-Reservation: 1 and tdm-policy response headers",
        headers=(("TDM-Reservation", "1"), ("tdm-policy", TDM_POLICY)),
        status=PairStatus.TDM_RESERVED_HEADER,
    ),
    PageOptOut(
        "tdm_unreserved",
        "tdm-reservation 0, as a response header and a meta tag: nothing reserved",
        metas=({"name": "tdm-reservation", "content": "0"},),
        headers=(("tdm-reservation", "0"),),
    ),
)
