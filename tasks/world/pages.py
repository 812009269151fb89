"""One HTML page of the world: its source text, the WAT view of it, and the manifest rows of its images.

The HTML and the WAT `HTML-Metadata` are built side by side from the same pieces, so a
WARC-based extractor (parsing the HTML) and a WAT-based one see the same `<img>`, `<a>` and
`<link>` tags (and so the same Creative Commons license links).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from clipcrawl.tasks.core.status import PairStatus
from clipcrawl.tasks.world.behaviours import BEHAVIOURS, PAGE_LEVEL, page_host, reserved_images, unreserved
from clipcrawl.tasks.world.captions import ALT_CASES, Alt, make_alt, pick_alt_case
from clipcrawl.tasks.world.page_optouts import PageOptOut
from clipcrawl.tasks.world.scenes import image_spec
from clipcrawl.tasks.world.srcs import BAD_SRC_STATUS, SRC_CASES, Resolver, make_src, pick_src_case

MIN_ALT_LENGTH, MAX_ALT_LENGTH = 5, 4096  # ExtractSettings defaults (LAION-400M)
# charset -> (page language, weight); non-UTF-8 pages hold text of their own script.
CHARSETS = {
    "utf-8": ("en", 70),
    "windows-1251": ("ru", 8),
    "shift_jis": ("ja", 7),
    "iso-8859-1": ("de", 5),
    "gb2312": ("zh", 5),
}
LATIN1_LANGS = ("de", "fr")
DECLARATIONS = ("header", "meta", "meta_http_equiv", "both")
SECTIONS = ("news", "blog", "shop", "gallery", "travel", "wiki")
HOME = {"en": "Home", "de": "Startseite", "fr": "Accueil", "ru": "Главная", "ja": "ホーム", "zh": "首页"}
# How a page shows its license -> weight: ~15% of pages have one, ~5% only links that are not one.
# decoy_*, plain_anchor: a decoy (LICENSE_DECOYS) comes first; decoy_then_rel: then a license link
# without rel=license, then the rel=license one that wins.
LICENSE_CASES = {"none": 80, "footer_rel": 5, "head_link": 4, "plain_anchor": 3, "decoy_then_rel": 3, "decoy_only": 5}
LICENSE_PATHS = {
    "licenses/by/4.0/": "CC BY 4.0",
    "licenses/by-sa/4.0/": "CC BY-SA 4.0",
    "licenses/by-nc/4.0/": "CC BY-NC 4.0",
    "licenses/by-nc-sa/3.0/": "CC BY-NC-SA 3.0",
    "licenses/by-nd/2.0/": "CC BY-ND 2.0",
    "licenses/by/4.0/deed.de": "CC BY 4.0 (Deutsch)",
    "publicdomain/zero/1.0/": "CC0 1.0",
    "publicdomain/mark/1.0/": "Public Domain Mark 1.0",
}
LICENSE_PREFIXES = (
    "https://creativecommons.org/",
    "http://creativecommons.org/",
    "//creativecommons.org/",
    "https://www.creativecommons.org/",
)
# Links that look like a license but are none: CC's own pages, another host with a CC-like path.
LICENSE_DECOYS = {
    "https://creativecommons.org/": "Creative Commons",
    "https://creativecommons.org/about/": "About CC",
    "https://search.creativecommons.org/": "Find CC images",
    "https://example-licenses.world.test/licenses/by/4.0/": "License terms",
}
ANCHOR_WORDS = {
    "en": "Read more about {}",
    "de": "Mehr über {}",
    "fr": "En savoir plus sur {}",
    "ru": "Подробнее о {}",
    "ja": "{}の詳細",
    "zh": "关于{}的更多信息",
}


@dataclass(frozen=True)
class Occurrence:
    """One `<img>` tag: a row of manifest/pairs.parquet (file columns added by the writer)."""

    page_url: str
    src: str
    alt: str | None
    url: str | None
    text: str | None
    status: str
    case: str
    src_case: str
    alt_case: str
    charset: str
    image_id: int
    matches: bool
    shared: bool
    license: str | None  # the page's license URL a correct extractor finds (absolute), None when none


@dataclass
class Page:
    url: str
    charset: str
    declared: str
    language: str
    license: str | None = None
    license_case: str = "none"
    html: str = ""
    head: dict = field(default_factory=dict)
    links: list[dict] = field(default_factory=list)
    images: list[Occurrence] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return f"text/html; charset={self.charset}" if self.declared in ("header", "both") else "text/html"


def as_written(text: str, charset: str) -> str:
    """What survives in a page of `charset`: characters it cannot encode become numeric references."""
    if charset == "utf-8":
        return text
    return text.encode(charset, "xmlcharrefreplace").decode(charset)


def anchor(entry: dict) -> str:
    """The `<a>` tag of a WAT `A@/href` link."""
    rel = f' rel="{entry["rel"]}"' if "rel" in entry else ""
    return f'<a{rel} href="{entry["url"]}">{entry["text"]}</a>'


@dataclass
class LicenseLinks:
    """A page's links to (or looking like) licenses, as WAT link entries, by where they are on the page."""

    case: str
    url: str | None = None  # the license an extractor must find
    head: list[dict] = field(default_factory=list)  # <link> tags
    nav: list[dict] = field(default_factory=list)  # <a> tags in <nav>, before the content
    footer: list[dict] = field(default_factory=list)  # <a> tags in <footer>, after it


def license_links(rng: random.Random, scheme: str) -> LicenseLinks:
    """Draw how a page shows its license; protocol-relative hrefs take `scheme` (of the page or its base)."""
    case = rng.choices(list(LICENSE_CASES), list(LICENSE_CASES.values()))[0]
    links = LicenseLinks(case)
    if case == "none":
        return links

    def cc(rel: bool) -> tuple[str, dict]:
        """A license link: the absolute URL it resolves to, and its WAT entry (url as written)."""
        path = rng.choice(list(LICENSE_PATHS))
        written = rng.choice(LICENSE_PREFIXES) + path
        # key order of Common Crawl's WAT: path, url, the tag's other attributes (rel), then text
        rel_value = {"rel": rng.choice(("license", "license", "license noopener"))} if rel else {}
        entry = {"path": "A@/href", "url": written, **rel_value, "text": LICENSE_PATHS[path]}
        return (f"{scheme}:{written}" if written.startswith("//") else written), entry

    if case in ("decoy_then_rel", "decoy_only", "plain_anchor"):
        decoy = rng.choice(list(LICENSE_DECOYS))
        links.nav.append({"path": "A@/href", "url": decoy, "text": LICENSE_DECOYS[decoy]})
    if case == "decoy_then_rel":
        links.nav.append(cc(rel=False)[1])
    if case == "head_link":
        links.url, entry = cc(rel=True)
        links.head.append({"path": "LINK@/href", "url": entry["url"], "rel": entry["rel"]})
    elif case != "decoy_only":
        links.url, entry = cc(rel=case != "plain_anchor")
        links.footer.append(entry)
    return links


def status_of(src_case: str, alt: Alt) -> PairStatus:
    if src_case in BAD_SRC_STATUS:
        return BAD_SRC_STATUS[src_case]
    if alt.text is None:
        return PairStatus.NO_ALT
    if len(alt.text) < MIN_ALT_LENGTH:
        return PairStatus.ALT_TOO_SHORT
    if len(alt.text) > MAX_ALT_LENGTH:
        return PairStatus.ALT_TOO_LONG
    return PairStatus.KEPT


@dataclass(frozen=True)
class SharedPair:
    """An `<img>` repeated verbatim on many pages (logos, banners): the source of cross-file duplicates."""

    image_id: int
    src: str
    alt: str
    matches: bool


def shared_pairs(seed: int, n: int, images: int, sites: int) -> list[SharedPair]:
    rng = random.Random(f"shared:{seed}")
    pairs = []
    for _ in range(n):
        image_id = unreserved(rng.randrange(images), images, sites)
        spec = image_spec(seed, image_id)
        src = make_src("abs_http", image_id, spec.format, image_id % sites, Resolver("http", "-", "/-/-/"), rng)
        alt = make_alt("caption", spec.scene, "en", rng)
        pairs.append(SharedPair(image_id, src.url, alt.written, True))
    return pairs


class PageBuilder:
    """Builds pages of one WAT/WARC file; `rng` is the file's own, so files are independent."""

    def __init__(
        self,
        seed: int,
        sites: int,
        images: int,
        shared: list[SharedPair],
        rng: random.Random,
        links_per_page: tuple[int, int],
        images_per_page: tuple[int, int],
    ):
        self.seed, self.sites, self.images, self.shared, self.rng = seed, sites, images, shared, rng
        self.links_per_page, self.images_per_page = links_per_page, images_per_page

    def page(
        self,
        url_id: str,
        showcase: bool = False,
        with_base: bool | None = None,
        optout: PageOptOut | None = None,
        behaviour: str | None = None,
    ) -> Page:
        """`optout`: the page's meta tags say it (its headers are the response's, crawlfile.py), and its img links
        that would be kept get the opt-out's status. `behaviour`: a page-level behaviour's page, on its page host,
        linking that behaviour's image (and, with images_per_page (0, 0), no other)."""
        rng = self.rng
        site = rng.randrange(self.sites)
        charset = (
            "utf-8" if showcase or behaviour else rng.choices(list(CHARSETS), [w for _, w in CHARSETS.values()])[0]
        )
        language = CHARSETS[charset][0]
        if charset == "iso-8859-1":
            language = rng.choice(LATIN1_LANGS)
        declared = rng.choice(DECLARATIONS)
        scheme = rng.choice(("http", "https"))
        host = BEHAVIOURS[behaviour].page_host if behaviour else page_host(site)
        directory = f"/{rng.choice(SECTIONS)}/{rng.randint(2015, 2099)}/"
        page = Page(f"{scheme}://{host}{directory}{url_id}.html", charset, declared, language)
        resolver = Resolver(scheme, host, directory)
        base = None
        if with_base if with_base is not None else rng.random() < 0.08:
            base = f"http://static.site-{site}.world.test/assets/v{rng.randint(1, 9)}/"
            resolver = Resolver("http", f"static.site-{site}.world.test", base.split(".test", 1)[1])
        self._fill(page, site, resolver, base, showcase, optout, behaviour)
        if optout is not None:
            page.images = [
                dataclasses.replace(
                    o,
                    status=str(optout.status) if optout.status and o.status == PairStatus.KEPT else o.status,
                    case=f"{o.case}+page_{optout.name}",
                )
                for o in page.images
            ]
        return page

    def _img_cases(self, showcase: bool) -> list[tuple[str, str]]:
        rng = self.rng
        if showcase:
            return [(s, "caption") for s in SRC_CASES] + [("abs_http", a) for a in ALT_CASES]
        lo, hi = self.images_per_page
        n = 0 if rng.random() < 0.1 else rng.randint(lo, hi)
        cases = []
        for _ in range(n):
            src_case = pick_src_case(rng)
            # A bad src is dropped for its URL whatever the alt, so pair it with a plain caption.
            cases.append((src_case, "caption" if src_case in BAD_SRC_STATUS else pick_alt_case(rng)))
        return cases

    def _fill(
        self,
        page: Page,
        site: int,
        res: Resolver,
        base: str | None,
        showcase: bool,
        optout: PageOptOut | None = None,
        behaviour: str | None = None,
    ) -> None:
        rng, cs, lang = self.rng, page.charset, page.language
        licenses = license_links(rng, res.scheme)
        page.license, page.license_case = licenses.url, licenses.case
        title = as_written(f"{HOME[lang]} · site {site} · {page.url.rsplit('/', 1)[1]}", cs)
        metas: list[dict] = []
        head = [f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n']
        if page.declared in ("meta", "both"):
            head.append(f'<meta charset="{cs}">\n')
            metas.append({"charset": cs})
        elif page.declared == "meta_http_equiv":
            head.append(f'<meta http-equiv="Content-Type" content="text/html; charset={cs}">\n')
            metas.append({"http-equiv": "Content-Type", "content": f"text/html; charset={cs}"})
        head.append(f"<title>{title}</title>\n")
        if base:
            head.append(f'<base href="{base}">\n')
        head.append('<meta name="viewport" content="width=device-width, initial-scale=1">\n')
        metas.append({"name": "viewport", "content": "width=device-width, initial-scale=1"})
        for meta in optout.metas if optout else ():
            head.append(f'<meta name="{meta["name"]}" content="{meta["content"]}">\n')
            metas.append(dict(meta))
        link = [
            {"path": "LINK@/href", "url": "/static/site.css", "rel": "stylesheet"},
            {"path": "LINK@/href", "url": "/favicon.ico", "rel": "icon"},
            {"path": "LINK@/href", "url": page.url, "rel": "canonical"},
        ] + licenses.head
        head += [f'<link rel="{x["rel"]}" href="{x["url"]}">\n' for x in link]
        head.append('<script src="/static/app.js"></script>\n<style>body { background: url(/static/bg.png) }</style>\n')
        page.head = {
            "Title": title,
            **({"Base": base} if base else {}),
            "Metas": metas,
            "Link": link,
            "Scripts": [{"path": "SCRIPT@/src", "url": "/static/app.js"}],
        }
        links = [{"path": "STYLE/#text", "url": "/static/bg.png"}]
        body = ["</head>\n<body>\n<nav>"]
        for i, name in enumerate((HOME[lang], "About", "Contact", "Archive")):
            href = ("/", "/about.html", "/contact.html", "/archive/")[i]
            body.append(f'<a href="{href}">{as_written(name, cs)}</a> ')
            links.append({"path": "A@/href", "url": href, "text": as_written(name, cs)})
        for entry in licenses.nav:
            body.append(anchor(entry) + " ")
            links.append(entry)
        body.append("</nav>\n<article>\n")
        cases = self._img_cases(showcase)
        n_anchors = rng.randint(*self.links_per_page)
        n_shared = 0 if showcase or not cases else rng.choice((0, 0, 1, 1, 2))
        items = ["a"] * n_anchors + ["img"] * len(cases) + ["shared"] * n_shared
        if not showcase:
            rng.shuffle(items)
        case_iter = iter(cases)
        for item in items:
            if item == "a":
                target = f"/{rng.choice(SECTIONS)}/{rng.randint(2015, 2099)}/p-{rng.randrange(10**6)}.html"
                text = as_written(ANCHOR_WORDS[lang].format(rng.choice(SECTIONS)), cs)
                body.append(f'<p><a href="{target}">{text}</a></p>\n')
                links.append({"path": "A@/href", "url": target, "text": text})
            elif item == "img":
                self._img(page, site, res, *next(case_iter), body, links)
            else:
                self._shared(page, rng.choice(self.shared), body, links)
        for image_id, shown in reserved_images(self.seed):
            # the showcase links every behaviour but the page-level ones, which a page of their own links
            if shown == behaviour or (showcase and shown not in PAGE_LEVEL):
                for scheme in BEHAVIOURS[shown].schemes:
                    self._behaviour_img(page, image_id, shown, scheme, body, links)
        footer = [{"path": "A@/href", "url": "/impressum.html", "text": "Impressum"}] + licenses.footer
        body.append(f"</article>\n<footer>{' | '.join(anchor(e) for e in footer)}</footer>\n</body>\n</html>\n")
        links += footer
        page.html = "".join(head + body)
        page.links = links

    def _behaviour_img(
        self, page: Page, image_id: int, behaviour: str, scheme: str, body: list[str], links: list[dict]
    ) -> None:
        """A showcase `<img>` of a reserved image, linked where its behaviour shows (its own host, if any)."""
        spec = image_spec(self.seed, image_id)
        host = BEHAVIOURS[behaviour].host or f"img.site-{image_id % self.sites}.world.test"
        url = f"{scheme}://{host}/images/{image_id:06d}.{spec.format}"
        # its own draws, not the file's: adding a behaviour to the table does not reshuffle the file's other pages
        alt = make_alt("caption", spec.scene, page.language, random.Random(f"showcase:{self.seed}:{image_id}:{scheme}"))
        body.append(f'<img src="{url}" alt="{alt.written}" width="{spec.width}" height="{spec.height}">\n')
        links.append({"path": "IMG@/src", "url": url, "alt": alt.written})
        case = "abs_https" if scheme == "https" else "abs_http"
        page.images.append(
            Occurrence(
                page.url,
                url,
                alt.written,
                url,
                alt.text,
                str(status_of(case, alt)),
                f"{case}+caption+behaviour_{behaviour}",
                case,
                "caption",
                page.charset,
                image_id,
                alt.matches,
                False,
                page.license,
            )
        )

    def _img(
        self, page: Page, site: int, res: Resolver, src_case: str, alt_case: str, body: list[str], links: list[dict]
    ) -> None:
        rng = self.rng
        image_id = (
            (rng.randrange(self.images // self.sites) * self.sites + site) % self.images
            if rng.random() < 0.85
            else rng.randrange(self.images)
        )
        image_id = unreserved(image_id, self.images, self.sites)
        spec = image_spec(self.seed, image_id)
        src = make_src(src_case, image_id, spec.format, image_id % self.sites, res, rng)
        alt = make_alt(alt_case, spec.scene, page.language, rng)
        written_alt = None if alt.written is None else as_written(alt.written, page.charset)
        status = status_of(src_case, alt)
        tag, entry = [f'<img src="{src.written}"'], {"path": "IMG@/src", "url": src.written}
        if written_alt is not None:
            tag.append(f' alt="{written_alt}"')
            entry["alt"] = written_alt
        if rng.random() < 0.15:
            title = as_written(rng.choice(("Zoom", "Click to enlarge", "Photo")), page.charset)
            tag.append(f' title="{title}"')
            entry["title"] = title
        longdesc = rng.random() < 0.03
        if longdesc:
            tag.append(' longdesc="/desc/long.html"')
        tag.append(f' width="{spec.width}" height="{spec.height}">\n')
        body.append("".join(tag))
        links.append(entry)
        if longdesc:
            links.append({"path": "IMG@/longdesc", "url": "/desc/long.html"})
        labels = [src_case, alt_case] + ([f"charset_{page.charset}"] if page.charset != "utf-8" else [])
        if page.license_case != "none":
            labels.append(f"license_{page.license_case}")
        if page.head.get("Base") and src_case in (
            "relative_parent",
            "relative_same",
            "root_relative",
            "protocol_relative",
        ):
            labels.append("base_href")
        page.images.append(
            Occurrence(
                page.url,
                src.written,
                written_alt,
                src.url,
                alt.text,
                str(status),
                "+".join(labels),
                src_case,
                alt_case,
                page.charset,
                image_id,
                alt.matches,
                False,
                page.license,
            )
        )

    def _shared(self, page: Page, pair: SharedPair, body: list[str], links: list[dict]) -> None:
        body.append(f'<img src="{pair.src}" alt="{pair.alt}">\n')
        links.append({"path": "IMG@/src", "url": pair.src, "alt": pair.alt})
        page.images.append(
            Occurrence(
                page.url,
                pair.src,
                pair.alt,
                pair.src,
                pair.alt,
                str(PairStatus.KEPT),
                "abs_http+caption+shared",
                "abs_http",
                "caption",
                page.charset,
                pair.image_id,
                pair.matches,
                True,
                page.license,
            )
        )
