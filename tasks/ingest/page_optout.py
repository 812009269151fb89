"""Page-level opt-outs and TDM reservations: whether a page withholds the pairs of the images it embeds.

A page opts out (PairStatus.PAGE_OPT_OUT) when its robots meta tags (`<meta name="robots">`, or one named
after our product token, as Google reads `<meta name="googlebot">`), its response's X-Robots-Tag headers or
a `<meta http-equiv="X-Robots-Tag">` standing for one say one of the configured directives (noai, noimageai, noindex, noimageindex, none by default), read as
the download stage reads an image's X-Robots-Tag (clipcrawl.tasks.download.optout.x_robots_opt_out:
"otherbot: noai" scopes the directive to another crawler). A page reserves text-and-data-mining rights
(W3C TDMRep, https://www.w3.org/community/reports/tdmrep/CG-FINAL-tdmrep-20240510/) with a
`tdm-reservation: 1` response header (TDM_RESERVED_HEADER; a folded "1, 0" holds a 1) or
`<meta name="tdm-reservation" content="1">` (or http-equiv; TDM_RESERVED_META); 0, or any other value, reserves
nothing. A page that says several of these gets the
first in that order. The pair's caption is the page's own text, so a reservation of the page covers it.

The parsers (wat.py, warc.py, extract.py) collect only the meta tags and headers named here, in the pass
that finds the img tags; with both switches off they collect nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.status import PairStatus
from clipcrawl.tasks.download.optout import (
    TDM_RESERVATION,
    tdm_header_reservation,
    tdm_reservation_value,
    x_robots_opt_out,
)
from clipcrawl.tasks.ingest.normalize import unescape_attribute
from clipcrawl.tasks.ingest.wat import PageLinks

ROBOTS = "robots"  # <meta name="robots">
X_ROBOTS_TAG = "x-robots-tag"  # the header, or <meta http-equiv="X-Robots-Tag">


@dataclass(frozen=True)
class PageRules:
    """What a file's pages are checked for, from its ExtractSettings."""

    token: str  # our product token, lowercase
    directives: frozenset[str]
    optouts: bool
    tdm: bool

    @classmethod
    def of(cls, settings: ExtractSettings) -> PageRules:
        consent = settings.consent
        return cls(
            consent.user_agent_token.lower(),
            frozenset(consent.optout_directives),
            consent.respect_optouts,
            consent.respect_tdm_reservation,
        )

    @cached_property
    def meta_names(self) -> frozenset[str]:
        """The <meta name> (else http-equiv) values, lowercase, the parsers collect."""
        optouts = (ROBOTS, self.token, X_ROBOTS_TAG) if self.optouts else ()
        return frozenset(optouts + ((TDM_RESERVATION,) if self.tdm else ()))

    @cached_property
    def header_names(self) -> frozenset[str]:
        """The response headers (lowercase) the parsers collect."""
        return frozenset(((X_ROBOTS_TAG,) if self.optouts else ()) + ((TDM_RESERVATION,) if self.tdm else ()))

    def verdict(self, page: PageLinks) -> PairStatus | None:
        """Why the page's pairs are withheld, or None when they are not."""
        metas = page.metas
        if page.escaped:  # WAT values are as written in the page: `noai&#44; noimageai` is two directives
            metas = tuple((name, unescape_attribute(c) if "&" in c else c) for name, c in metas)
        if self.optouts:
            values = [c for name, c in metas if name in (ROBOTS, X_ROBOTS_TAG, self.token)]
            values += [v for name, v in page.headers if name == X_ROBOTS_TAG]
            if values and x_robots_opt_out(values, self.token, self.directives):
                return PairStatus.PAGE_OPT_OUT
        if self.tdm:
            if tdm_header_reservation(v for name, v in page.headers if name == TDM_RESERVATION):
                return PairStatus.TDM_RESERVED_HEADER
            if any(tdm_reservation_value(c) for name, c in metas if name == TDM_RESERVATION):
                return PairStatus.TDM_RESERVED_META
        return None
